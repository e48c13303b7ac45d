"""Training step of every model: torch.compile(fullgraph=True) against eager, on CPU.

Beauty shapes (the CLI's default sizes per model: SASRec hidden 64 BCE and CE, DIF-SR
at the paper's size, SINE, DSS, S3-Rec pretraining, the composed model of ``--preset best``:
DIF-SR's fusion + DSS's intentions, full-softmax CE), batch 256 (S3-Rec: 100), max_len 50.
Each model runs in its own fresh process, eager then compiled (inductor, the default
backend, ``TrainConfig(compile=True)``'s), over the same ``--batches`` training batches:
a warm-up pass over them (for the compiled step: the compilations, one per new batch
shape until dynamo marks the shapes dynamic), then ``--repeats`` timed passes. Prints the
median seconds per step of each, their ratio, and the compile time (warm-up pass minus
a steady pass) on its own. ``eager-static`` runs, eagerly, the static-shape paths the
compiled graph takes (every position a row, padding weighted 0) instead of eager's packed
ones: what the packing is worth in eager, and what compilation itself buys.

    python benchmarks/bench_compile.py [--models sasrec-ce difsr ...] [--batches 6] [--repeats 3]
"""
from __future__ import annotations

import statistics
import sys
import time
import unittest.mock

from common import model_children, print_table

MODELS = ["sasrec-bce", "sasrec-ce", "difsr", "sine", "dss", "s3rec", "composed-best"]


def build_case(name: str, data: str, batches: int):
    """``(model, step_inputs, loss_fn)`` of a model at its CLI default size on ``data``:
    ``loss_fn(inputs) -> loss``, one entry of ``step_inputs`` per training batch."""
    import torch

    from seqrec.data import load_dataset
    from seqrec.models import build_model
    from seqrec.models.difsr import PRESETS, attribute_config

    ds = load_dataset(data)
    split = ds.leave_one_out(max_len=50)
    torch.manual_seed(0)
    base = dict(num_items=ds.num_items, max_len=50)
    sasrec = dict(base, hidden_size=64, num_layers=2, num_heads=2, hidden_dropout=0.5, attention_dropout=0.5)
    negatives = 1
    if name in ("sasrec-bce", "sasrec-ce"):
        model = build_model("sasrec", **sasrec, loss=name.split("-")[1])
    elif name == "difsr":
        model = build_model("difsr", **{**base, **PRESETS["difsr-beauty"].model}, attributes=ds,
                            **attribute_config(ds, ("attributes",)))
    elif name == "sine":
        model = build_model("sine", **base, hidden_size=64)
        negatives = 100
    elif name == "dss":
        model = build_model("dss", **base, hidden_size=64, num_layers=2, hidden_dropout=0.5, attention_dropout=0.5)
    elif name == "s3rec":
        from seqrec.models.s3rec import item_attribute_table
        from seqrec.train.pretrain import PretrainSamples

        _, num_attributes, fields = item_attribute_table(ds)
        model = build_model("s3rec", **sasrec, num_attributes=num_attributes, attribute_fields=fields)
        model.attach_dataset(ds)
        samples = PretrainSamples(ds, max_len=50)
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))
        inputs = [samples.batch(order[i * 100:(i + 1) * 100].numpy()) for i in range(batches)]
        return model, inputs, lambda x: model.pretrain_loss(x, seed=7)[0]
    elif name == "composed-best":
        from seqrec.models.composed import PRESETS as COMPOSED_PRESETS

        model = build_model("composed", **base, **COMPOSED_PRESETS["best"].model, attributes=ds,
                            **attribute_config(ds, ("attributes",)))
    else:
        raise SystemExit(f"unknown model {name}")
    it = split.train_batches(256, seed=0, epoch=0, num_negatives=negatives)
    inputs = [next(it) for _ in range(batches)]
    return model, inputs, lambda b: model.loss_terms(b).loss


def run_model(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, inputs, loss_fn = build_case(args.model, args.data, args.batches)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    out = {"model": args.model, "threads": torch.get_num_threads(),
           "widths": sorted({int(getattr(x, "input_ids", x).size(1)) for x in inputs})}
    for variant in ("eager", "eager-static", "compiled"):
        fn = torch.compile(loss_fn, fullgraph=True) if variant == "compiled" else loss_fn

        def one_pass():
            for x in inputs:
                if variant == "eager-static":  # the static-shape paths the compiled graph takes, run eagerly
                    with unittest.mock.patch.object(torch.compiler, "is_compiling", lambda: True):
                        loss = fn(x)
                else:
                    loss = fn(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        start = time.perf_counter()
        one_pass()
        warmup = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            one_pass()
            times.append(time.perf_counter() - start)
        step = statistics.median(times) / len(inputs)
        out[variant] = {"step_seconds": step, "warmup_seconds": warmup,
                        "compile_seconds": max(warmup - step * len(inputs), 0.0)}
    return out


def _row(r: dict) -> list:
    e, st, c = r["eager"], r["eager-static"], r["compiled"]
    return [r["model"], e["step_seconds"] * 1e3, st["step_seconds"] * 1e3, c["step_seconds"] * 1e3,
            e["step_seconds"] / c["step_seconds"], st["step_seconds"] / c["step_seconds"], c["compile_seconds"],
            " ".join(map(str, r["widths"])), r["threads"]]


def main(argv=None) -> int:
    driven = model_children(argv, doc=__doc__, script=__file__, models=MODELS, default_models=MODELS,
                            default_batches=6, run_model=run_model, row=_row)
    if driven is None:
        return 0
    args, rows = driven
    print_table(f"training step (forward + loss + backward + Adam), median of {args.repeats} passes over "
                f"{args.batches} batches, CPU",
                ["model", "eager ms", "eager-static ms", "compiled ms", "eager/compiled", "static/compiled",
                 "compile s", "widths", "threads"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
