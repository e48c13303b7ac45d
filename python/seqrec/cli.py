"""The ``seqrec`` command line: train, evaluate, data statistics.

    seqrec train --model sasrec --data synthetic
    seqrec train --model sasrec --data ../shared/data/Beauty --loss bce --out runs/beauty
    seqrec train ... --out runs/beauty --resume        # continue a killed run
    seqrec train --model dss --data ../shared/data/Beauty --seq2seq-weight 0   # seq2item-only
    seqrec evaluate --checkpoint runs/beauty
    seqrec data stats --data ../shared/data/ml-100k --baseline
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .data import DataError, load_dataset

# Defaults of each model's paper, applied when the option is not given.
MODEL_DEFAULTS = {
    "sasrec": dict(hidden_size=64, num_layers=2, num_heads=2, dropout=0.5, loss="bce", lr=1e-3,
                   batch_size=256, num_negatives=1),
    # SINE: the concept pool, K, tau and lambda come from SINEConfig / --preset.
    "sine": dict(hidden_size=64, dropout=0.0, lr=1e-3, batch_size=256, num_negatives=100),
    # DSS: SASRec's Beauty budget, single head, the paper's softmax seq2item loss (no
    # negatives; --loss sampled draws 100 unless --num-negatives says otherwise).
    "dss": dict(hidden_size=64, num_layers=2, num_heads=1, dropout=0.5, loss="ce", lr=1e-3,
                batch_size=256, num_negatives=1),
}


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (default), an S3-Rec .txt file / folder, or RecBole atomic files "
                        "(.inter file, stem or folder)")
    p.add_argument("--format", choices=["s3rec", "atomic"], default=None,
                   help="input format (inferred from the path when omitted)")
    p.add_argument("--synthetic-users", type=int, default=2000, help="users of the synthetic dataset")
    p.add_argument("--synthetic-items", type=int, default=600, help="items of the synthetic dataset")
    p.add_argument("--kcore", type=int, default=None, help="k-core filter users and items before splitting")
    p.add_argument("--max-len", type=int, default=50, help="maximum sequence length (most recent items kept)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrec", description="Sequential recommendation on a compiled core.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model, select by validation, report test metrics",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--model", default="sasrec", choices=sorted(MODEL_DEFAULTS), help="model to train")
    _add_data_args(t)
    t.add_argument("--loss", choices=["bce", "ce", "sampled"], default=None,
                   help="bce: pairwise BCE with sampled negatives; ce: softmax cross-entropy over all items; "
                        "sampled: softmax over the target and --num-negatives sampled items (dss) "
                        "(default: the model paper's)")
    t.add_argument("--hidden-size", type=int, default=None)
    t.add_argument("--num-layers", type=int, default=None)
    t.add_argument("--num-heads", type=int, default=None)
    t.add_argument("--dropout", type=float, default=None, help="hidden and attention dropout")
    t.add_argument("--preset", default=None,
                   help="named settings of the model (sine: " + ", ".join(_sine_presets()) + "; dss: "
                        + ", ".join(_dss_presets()) + "); explicit flags override them")
    t.add_argument("--num-negatives", type=int, default=None,
                   help="sampled negatives per training position (default: the model's; sasrec 1, sine 100, "
                        "dss 100 with --loss sampled)")
    t.add_argument("--temperature", type=float, default=None,
                   help="sine: tau of the interest aggregation (default 0.1); dss: clustering temperature tau "
                        "of p(k|i) (default 0.5)")
    dss = t.add_argument_group("DSS (--model dss; defaults: DSSConfig's)")
    dss.add_argument("--num-intentions", type=int, default=None, help="K intention prototypes / vectors (default 4)")
    dss.add_argument("--seq2seq-weight", type=float, default=None,
                     help="weight of the seq2seq InfoNCE term; 0 = the seq2item-only ablation (default 0.1)")
    dss.add_argument("--seq2seq-temperature", type=float, default=None,
                     help="extra temperature of the seq2seq logits (already divided by sqrt(D))")
    dss.add_argument("--confidence-lambda", type=float, default=None,
                     help="fraction in (0, 1] of the intention pairs present on both sides kept by the "
                          "top-lambda confidence cut (default 0.5)")
    g = t.add_argument_group("SINE (--model sine)")
    g.add_argument("--num-prototypes", type=int, default=None, help="L, size of the concept pool (default 500)")
    g.add_argument("--num-interests", type=int, default=None, help="K, concepts activated per user (default 4)")
    g.add_argument("--assign-temperature", type=float, default=None,
                   help="temperature of the intention assignment softmax (default 0.1)")
    g.add_argument("--reg-weight", type=float, default=None,
                   help="lambda of the covariance regulariser on the prototypes (default 0.1)")
    g.add_argument("--merge", choices=["aggregate", "max"], default=None,
                   help="how scores use the K interests: the paper's aggregated user vector (default) or "
                        "the max over interests")
    g.add_argument("--intent-attention", choices=["paper", "assigned"], default=None,
                   help="per-intention attention: the paper's (default) or the authors' code's, scaled by the "
                        "assignment (more distinct interests)")
    g.add_argument("--max-prefixes", type=int, default=None,
                   help="training prefixes per sequence, most recent first (default: all)")
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--patience", type=int, default=10, help="evaluations without improvement before stopping (0: never)")
    t.add_argument("--eval-every", type=int, default=1, help="validate every N epochs")
    t.add_argument("--metric", default="NDCG@20", help="validation metric for early stopping and model selection")
    t.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="cut-offs reported")
    t.add_argument("--sampled-negatives", type=int, default=99, help="negatives per user in the sampled protocol")
    t.add_argument("--no-exclude-history", action="store_true",
                   help="rank items of the user's history too (default: excluded, except the target)")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    t.add_argument("--backend", choices=["seqrec", "reference"], default=None,
                   help="compiled operators (seqrec) or their plain-PyTorch references")
    t.add_argument("--out", default=None, help="folder for checkpoint.pt, history.jsonl and result.json")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")

    e = sub.add_parser("evaluate", help="evaluate a saved run on its test set")
    e.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt")
    e.add_argument("--data", default=None, help="dataset (default: the one the run was trained on)")
    e.add_argument("--format", choices=["s3rec", "atomic"], default=None)
    e.add_argument("--device", default="cpu")

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="print dataset statistics (and a popularity baseline)")
    _add_data_args(s)
    s.add_argument("--baseline", action="store_true",
                   help="also evaluate a popularity baseline, full ranking, with rank_topk and a NumPy reference")
    s.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    return parser


def format_table(title: str, metrics: dict, protocol: str) -> str:
    keys = list(metrics)
    width = max(8, *(len(k) for k in keys))
    lines = [title, f"  protocol: {protocol}", "  " + " ".join(f"{k:>{width}}" for k in keys),
             "  " + " ".join(f"{metrics[k]:>{width}.4f}" for k in keys)]
    return "\n".join(lines)


def _sine_presets() -> list[str]:
    from .models.sine import SINE_PRESETS

    return sorted(SINE_PRESETS)


def _dss_presets() -> list[str]:
    from .models.dss import PRESETS

    return sorted(PRESETS)


def _dss_config(args, num_items: int) -> dict:
    from .models.dss import PRESETS, DSSConfig

    if args.preset is not None and args.preset not in PRESETS:
        raise ValueError(f"--preset {args.preset!r}: dss has presets {sorted(PRESETS)}")
    defaults = {**MODEL_DEFAULTS["dss"], **PRESETS.get(args.preset, {})}
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]  # noqa: E731
    if pick("num_heads") != 1:
        raise ValueError("--num-heads: dss uses a single-head encoder (1)")
    dropout = pick("dropout")
    config = dict(num_items=num_items, max_len=args.max_len, hidden_size=pick("hidden_size"),
                  num_layers=pick("num_layers"), hidden_dropout=dropout, attention_dropout=dropout,
                  loss=pick("loss"))
    for field, flag in (("num_intentions", "num_intentions"), ("tau", "temperature"),
                        ("seq2seq_weight", "seq2seq_weight"), ("seq2seq_temperature", "seq2seq_temperature"),
                        ("confidence_lambda", "confidence_lambda")):
        value = getattr(args, flag)
        # Every DSS field is written out, so the run's spec does not depend on later defaults.
        config[field] = value if value is not None else defaults.get(
            field, DSSConfig.__dataclass_fields__[field].default)
    return config


def _model_config(args, num_items: int) -> tuple[str, dict]:
    defaults = MODEL_DEFAULTS[args.model]
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]  # noqa: E731
    if args.model == "sine":
        from .models.sine import SINE_PRESETS

        if args.preset is not None and args.preset not in SINE_PRESETS:
            raise ValueError(f"unknown sine preset {args.preset!r}; available: {sorted(SINE_PRESETS)}")
        config = dict(num_items=num_items, max_len=args.max_len, hidden_size=pick("hidden_size"),
                      dropout=pick("dropout"), **SINE_PRESETS.get(args.preset, {}))
        for name in ("num_prototypes", "num_interests", "temperature", "assign_temperature", "reg_weight",
                     "merge", "intent_attention", "max_prefixes"):
            if getattr(args, name) is not None:
                config[name] = getattr(args, name)
        return args.model, config
    if args.model == "dss":
        return args.model, _dss_config(args, num_items)
    if args.preset is not None:
        raise ValueError(f"--preset: model {args.model!r} has no presets")
    dropout = pick("dropout")
    config = dict(num_items=num_items, max_len=args.max_len, hidden_size=pick("hidden_size"),
                  num_layers=pick("num_layers"), num_heads=pick("num_heads"), hidden_dropout=dropout,
                  attention_dropout=dropout, loss=pick("loss"))
    return args.model, config


def cmd_train(args) -> int:
    from .models import build_model
    from .train import TrainConfig, Trainer

    if args.num_negatives is not None and args.num_negatives < 1:
        raise ValueError(f"--num-negatives must be >= 1, got {args.num_negatives}")
    dataset = _load(args)
    split = dataset.leave_one_out(max_len=args.max_len)
    name, config = _model_config(args, dataset.num_items)
    defaults = MODEL_DEFAULTS[args.model]
    num_negatives = args.num_negatives
    if num_negatives is None:
        num_negatives = 100 if config.get("loss") == "sampled" else defaults["num_negatives"]
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size or defaults["batch_size"], lr=args.lr or defaults["lr"],
        weight_decay=args.weight_decay,
        num_negatives=num_negatives,
        patience=args.patience, eval_every=args.eval_every, metric=args.metric,
        ks=tuple(args.ks), sampled_negatives=args.sampled_negatives, exclude_history=not args.no_exclude_history,
        seed=args.seed, device=args.device, progress=args.progress)
    torch.manual_seed(args.seed)  # parameter initialisation
    model = build_model(name, backend=args.backend, **config)
    spec = {"name": name, "config": config, "backend": args.backend,
            "data": {"source": args.data, "format": args.format, "kcore": args.kcore, "max_len": args.max_len,
                     "synthetic_users": args.synthetic_users, "synthetic_items": args.synthetic_items}}
    trainer = Trainer(model, split, train_config, out_dir=args.out, model_spec=spec)
    if args.resume:
        if args.out is None:
            raise SystemExit("seqrec train: --resume needs --out (the folder of the run to continue)")
        if trainer.resume():
            print(f"resumed {args.out} after epoch {trainer.epoch}", file=sys.stderr)
    print(f"{dataset!r}; {split.info.name}, max_len {split.max_len}; model {name} {config}", file=sys.stderr)

    def on_epoch(rec):
        valid = rec.get("valid")
        extra = f" valid {args.metric} {valid[args.metric]:.4f}" if valid else ""
        print(f"epoch {rec['epoch']:3d} loss {rec['loss']:.4f}{extra} ({rec['train_seconds']:.1f}s)", file=sys.stderr)

    result = trainer.fit(on_epoch=on_epoch)
    print(f"best epoch {result.best_epoch} by valid {args.metric}")
    print(format_table("test, full ranking", result.test_full, result.protocol_full))
    print(format_table("test, sampled", result.test_sampled, result.protocol_sampled))
    return 0


def cmd_evaluate(args) -> int:
    from .models import build_model
    from .train import TrainConfig, Trainer, load_checkpoint

    state = load_checkpoint(args.checkpoint)
    spec = state["model_spec"]
    data = spec["data"]
    dataset = load_dataset(args.data or data["source"], args.format or data["format"], kcore=data["kcore"],
                           synthetic_size=(data["synthetic_users"], data["synthetic_items"]))
    model = build_model(spec["name"], backend=spec.get("backend"), **spec["config"])
    model.load_state_dict(state["best_state"] or state["model"])
    cfg = dict(state["train_config"])
    cfg["device"] = args.device
    trainer = Trainer(model, dataset.leave_one_out(max_len=data["max_len"]), TrainConfig(**cfg))
    print(format_table("test, full ranking", trainer.evaluate("test", "full"), trainer.protocol("full").describe()))
    print(format_table("test, sampled", trainer.evaluate("test", "sampled"), trainer.protocol("sampled").describe()))
    return 0


def _load(args):
    return load_dataset(args.data, args.format, kcore=args.kcore,
                        synthetic_size=(args.synthetic_users, args.synthetic_items))


def cmd_data_stats(args) -> int:
    dataset = _load(args)
    for k, v in dataset.stats().items():
        print(f"{k:>16}: {v}")
    if args.baseline:
        from .eval.baselines import popularity_baseline

        results = popularity_baseline(dataset.leave_one_out(max_len=args.max_len), ks=tuple(args.ks))
        for label, metrics in results["metrics"].items():
            print(format_table(f"popularity baseline, test, {label}", metrics, results["protocol"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "data" and args.data_command == "stats":
            return cmd_data_stats(args)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"seqrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
