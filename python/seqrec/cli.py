"""The ``seqrec`` command line: train, evaluate, data statistics.

    seqrec train --model sasrec --data synthetic
    seqrec train --model sasrec --data ../shared/data/Beauty --loss bce --out runs/beauty
    seqrec train --model difsr --data ../shared/data/Beauty --attributes attributes --preset difsr-beauty
    seqrec train ... --out runs/beauty --resume        # continue a killed run
    seqrec pretrain --model s3rec --data ../shared/data/Beauty --epochs 150 --out runs/s3rec-pre
    seqrec train --model s3rec --data ../shared/data/Beauty --init runs/s3rec-pre --out runs/s3rec
    seqrec train --model dss --data ../shared/data/Beauty --seq2seq-weight 0   # seq2item-only
    seqrec pretrain --model dss --data ../shared/data/LastFM --out runs/dss-pre   # DSS as pretraining
    seqrec train --model sasrec --data ../shared/data/LastFM --init runs/dss-pre --loss ce
    seqrec evaluate --checkpoint runs/beauty
    seqrec export --checkpoint runs/beauty --out models/beauty   # self-contained: seqrec.from_pretrained
    seqrec data stats --data ../shared/data/ml-100k --baseline
    seqrec data download Beauty --to data              # -> data/Beauty/
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .data import DataError, load_dataset
from .utils import (NoSpaceError, lock_run_folder, reuse_freed_memory, stale_temp_files, verify_torch_file,
                    write_json)

# Pretraining-only models, and the fine-tune model `seqrec train` builds for them.
PRETRAIN_MODELS = {"s3rec": "sasrec"}
# Models `seqrec pretrain` knows, and their pretraining defaults (S3-Rec: the authors';
# DSS: the DSSRec reading, issue 29). DSS is also a model of its own (`seqrec train --model dss`).
PRETRAIN_DEFAULTS = {
    "s3rec": dict(epochs=150, batch_size=100, samples="prefixes"),
    "dss": dict(epochs=300, batch_size=256, samples="windows"),
}
# Config fields whose pretraining default is not the config's (DSSRec weighs seq2seq as seq2item).
PRETRAIN_MODEL_DEFAULTS = {"dss": dict(seq2seq_weight=1.0)}
# DSS fields whose meaning in pretraining differs from joint training's.
PRETRAIN_HELP = {"dss": {
    "confidence_lambda": "top-lambda confidence cut: the (sample, intention) seq2seq losses at or below the "
                         "kthvalue at floor(lambda x batch x K) are kept",
    "seq2seq_weight": "weight of the seq2seq InfoNCE term (seq2item's is 1); 0 = seq2item only",
}}


@functools.cache
def _train_options():
    """The model options of `seqrec train`: every registered model, by the model it builds."""
    from .model_options import ModelOptions
    from .models.registry import REGISTRY

    return ModelOptions({name: PRETRAIN_MODELS.get(name, name) for name in REGISTRY})


@functools.cache
def _pretrain_options():
    """The model options of `seqrec pretrain`: its models' config fields, with the pretraining
    defaults and meanings (DSS pretraining has no next-item loss)."""
    from .model_options import ModelOptions

    return ModelOptions({name: name for name in PRETRAIN_DEFAULTS}, defaults=PRETRAIN_MODEL_DEFAULTS,
                        skip={"dss": ("loss",)}, helps=PRETRAIN_HELP)


def _pretrain_defaults_text(name: str) -> str:
    """"(default: ...)" of a pretraining setting whose default is each pretrain model's."""
    from .model_options import defaults_text

    return defaults_text({m: d[name] for m, d in PRETRAIN_DEFAULTS.items()})


def _train_defaults_text(name: str) -> str:
    """"(default: ...)" of a training setting whose default is each model's paper's."""
    from .model_options import defaults_text

    options = _train_options()
    return defaults_text({m: options.registration(m).defaults.train.get(name) for m in options.models})


# ---------------------------------------------------------------- option types
# argparse `type=` functions: a bad value is refused while parsing, in argparse's words,
# "argument --lr: must be > 0, got 0", never replaced by a default later.
def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


SEED_LIMIT = 2**63  # the seed contract of every seqrec op and command: 0 <= seed < 2**63


def memory_size(text: str) -> str:
    """--eval-memory: checked while parsing (the setting keeps the text, as the run records it)."""
    from .eval.memory import parse_memory

    try:
        parse_memory(text, "the size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def seed_int(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (default), an S3-Rec .txt file / folder, or RecBole atomic files "
                        "(.inter file, stem or folder)")
    p.add_argument("--format", choices=["s3rec", "atomic"], default=None,
                   help="input format (inferred from the path when omitted)")
    p.add_argument("--synthetic-users", type=positive_int, default=2000, help="users of the synthetic dataset")
    p.add_argument("--synthetic-items", type=positive_int, default=600, help="items of the synthetic dataset")
    p.add_argument("--kcore", type=nonneg_int, default=None, help="k-core filter users and items before splitting")
    p.add_argument("--max-len", type=positive_int, default=50,
                   help="maximum sequence length (most recent items kept)")


def _data_flags(args) -> str:
    """The data flags of ``args`` that a later command on the same data must repeat (shell
    quoted): --data, and those not at their defaults (another --max-len or synthetic size
    changes the model's shapes)."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_data_args(parser)
    defaults = vars(parser.parse_args([]))
    flags = [f"--data {shlex.quote(str(args.data))}"]
    for action in parser._actions:
        value = getattr(args, action.dest)
        if action.dest == "data" or value == defaults[action.dest]:
            continue
        if action.dest.startswith("synthetic_") and args.data != "synthetic":
            continue  # read only for --data synthetic
        flags.append(f"{action.option_strings[0]} {shlex.quote(str(value))}")
    return " ".join(flags)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrec", description="Sequential recommendation on a compiled core.")
    sub = parser.add_subparsers(dest="command", required=True)

    # _DefaultsHelp: each option's default is said once (by its help, or appended when
    # the help does not state it and it is not None).
    t = sub.add_parser("train", help="train a model, select by validation, report test metrics",
                       formatter_class=_DefaultsHelp)
    options = _train_options()
    t.add_argument("--model", default="sasrec", choices=sorted(options.models), help="model to train")
    _add_data_args(t)
    t.add_argument("--preset", default=None,
                   help=f"named settings: a paper's, or composed's best (our recipe, README 'The recipe'); explicit "
                        f"options override them ({options.preset_help()})")
    t.add_argument("--num-negatives", type=positive_int, default=None,
                   help="sampled negatives per training position (default: the model's; sasrec 1, sine 100, "
                        "dss 100 with --loss sampled)")
    # One flag per config field (seqrec.model_options), the flags of one model in its group.
    groups = options.add_to(t)
    takers = [m for m in options.models if options.registration(m).side_information is not None]
    (groups[takers[0]] if len(takers) == 1 else t).add_argument(
        "--attributes", nargs="+", default=None, metavar="FIELD",
        help="attribute fields of the dataset used as side information, and by --model composed's S3-Rec terms "
             "AAP / MAP (S3-Rec json data: 'attributes'; RecBole atomic: the .item columns, e.g. 'class')")
    t.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (at most; see --patience; default: the --preset's, else 200)")
    t.add_argument("--batch-size", type=positive_int, default=None,
                   help="users per batch " + _train_defaults_text("batch_size"))
    t.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate " + _train_defaults_text("lr"))
    t.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="Adam weight decay (default: 0)")
    t.add_argument("--train-negatives", type=_negatives_arg, default="uniform",
                   help="training negatives (--negatives is the sampled evaluation protocol's): uniform (unseen "
                        "items), popularity, in-batch, or a mix with shares of --num-negatives, e.g. "
                        "uniform,popularity or uniform:1,in-batch:3")
    t.add_argument("--log-q", choices=["auto", "on", "off"], default="auto",
                   help="log-Q correction of the sampled softmax (auto: on for non-uniform negatives)")
    t.add_argument("--sparse-embeddings", action="store_true",
                   help="sparse item-table gradients with a row-wise (lazy) Adam: a step costs the rows a batch "
                        "touches, not the catalogue (bce / sampled losses)")
    _add_trainer_args(t)
    t.add_argument("--patience", type=nonneg_int, default=None,
                   help="evaluations without improvement before stopping (0: never; default: the --preset's, "
                        "else 10)")
    t.add_argument("--eval-every", type=positive_int, default=1, help="validate every N epochs")
    t.add_argument("--metric", default="NDCG@20", help="validation metric for early stopping and model selection")
    t.add_argument("--valid-ranking", choices=["full", "sampled"], default="full",
                   help="protocol of the validation that selects the epoch: full ranking, or sampled (target vs "
                        "--sampled-negatives; the S3-Rec authors' sampled-protocol runs select by its MRR)")
    t.add_argument("--ks", type=positive_int, nargs="+", default=[5, 10, 20], help="cut-offs reported")
    t.add_argument("--sampled-negatives", type=positive_int, default=99,
                   help="negatives per user in the sampled protocol")
    _add_eval_block_args(t)
    t.add_argument("--no-exclude-history", action="store_true",
                   help="rank items of the user's history too (default: excluded, except the target)")
    t.add_argument("--seed", type=seed_int, default=42,
                   help="seeds initialisation, batch order, negatives and dropout; 0 <= seed < 2**63")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    t.add_argument("--backend", choices=["seqrec", "reference"], default=None,
                   help="compiled operators (seqrec) or their plain-PyTorch references")
    t.add_argument("--out", default=None, help="folder for checkpoint.pt, history.jsonl and result.json")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds a run (its checkpoint, history and result "
                        "are deleted); without it, and without --resume, such a folder is refused")
    t.add_argument("--init", default=None, metavar="CKPT",
                   help="initialise the weights by name from a checkpoint: a `seqrec pretrain` folder or its "
                        "pretrain.pt (required for --model s3rec, whose fine-tune model is a causal SASRec), "
                        "or a `seqrec train` folder / checkpoint.pt; prints which tensors were loaded. "
                        "Unset --hidden-size/--num-layers/--num-heads default to the checkpoint's")
    t.add_argument("--init-partial", action="store_true",
                   help="with --init: load what fits even when encoder tensors of the model are missing from the "
                        "checkpoint or have other shapes (they stay at their initialisation); without it such a "
                        "load is refused")
    t.add_argument("--init-fold-scale", action="store_true",
                   help="with --init from `seqrec pretrain --model dss`, fine-tuning by seq2item alone (DSS "
                        "--preset seq2item-only): fold the pretraining's 1/sqrt(hidden size) item-score scale "
                        "into the loaded out_norm, so the fine-tune starts from the pretraining's scores "
                        "instead of logits sqrt(hidden size) times sharper")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: on a terminal, off in CI or when stderr goes to a file)")
    _add_distributed_arg(t)

    _add_pretrain_parser(sub)

    e = sub.add_parser("evaluate", help="evaluate a saved run on its test set")
    e.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt")
    e.add_argument("--data", default=None, help="dataset (default: the one the run was trained on)")
    e.add_argument("--format", choices=["s3rec", "atomic"], default=None)
    e.add_argument("--device", default="cpu")
    _add_eval_block_args(e, saved=True)
    _add_distributed_arg(e)

    x = sub.add_parser("export", help="convert a run folder into a self-contained model (seqrec.from_pretrained)",
                       description="Convert a run folder into a self-contained model folder "
                                   "(seqrec.from_pretrained). " + NOT_UNDER_TORCHRUN)
    x.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt of `seqrec train`")
    x.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, vocab.json, "
                                                "evaluation.json); a saved model there is replaced")
    x.add_argument("--data", default=None, help="dataset for the item vocabulary (default: the one the run was "
                                                "trained on)")
    x.add_argument("--format", choices=["s3rec", "atomic"], default=None)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="print dataset statistics (and a popularity baseline)")
    _add_data_args(s)
    s.add_argument("--baseline", action="store_true",
                   help="also evaluate a popularity baseline (items ranked by training interactions), test set, "
                        "full ranking")
    s.add_argument("--ks", type=positive_int, nargs="+", default=[5, 10, 20])
    _add_download_parser(dsub)
    _add_prepare_parser(dsub)
    return parser


def unit_fraction(text: str) -> float:
    """A number in (0, 1): a quantile or a share."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def gamma_float(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def logger_names(text: str) -> str:
    """--logger: comma-separated names, checked while parsing (the TensorBoard import is
    checked when the run starts, before any training)."""
    from .train.callbacks import LOGGERS

    names = [n.strip() for n in text.split(",")] if text.strip() not in ("", "none") else []
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown logger(s) {', '.join(map(repr, unknown))}; choose from "
                                         f"{', '.join(LOGGERS)} (comma-separated) or none")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a logger named twice in {text!r}")
    return ",".join(names)


def _add_trainer_args(t) -> None:
    """Optimisation, logging, split and evaluation options of `seqrec train` (TrainConfig's
    fields and the split; the model options are elsewhere)."""
    from .eval.metrics import EXTRA_METRICS
    from .train.optim import AUTOCAST, SCHEDULERS

    o = t.add_argument_group("optimisation and logging")
    o.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                   help="learning-rate schedule, stepped per optimizer step: none (constant), cosine (to 0 at the "
                        "end of --epochs; a resume cannot change --epochs), step (times --lr-gamma every "
                        "--lr-step-epochs epochs) (default: none)")
    o.add_argument("--warmup-steps", type=nonneg_int, default=0, metavar="N",
                   help="linear warmup over the first N optimizer steps, before the schedule (default: 0)")
    o.add_argument("--lr-step-epochs", type=positive_int, default=10, metavar="N",
                   help="--scheduler step: epochs between two decays (default: 10)")
    o.add_argument("--lr-gamma", type=gamma_float, default=0.1,
                   help="--scheduler step: factor of each decay, in (0, 1] (default: 0.1)")
    o.add_argument("--clip-grad-norm", type=positive_float, default=None, metavar="MAX",
                   help="clip the global L2 norm of the gradients to MAX before each step (default: no clipping)")
    o.add_argument("--accumulate", type=positive_int, default=1, metavar="N",
                   help="sum the gradients of N batches (each loss / N) into one optimizer step; the last group of "
                        "an epoch may be smaller (default: 1)")
    o.add_argument("--autocast", choices=AUTOCAST, default="none",
                   help="mixed precision of the training forward pass: bf16 (CPU and CUDA) or fp16 (CUDA only, "
                        "with a gradient scaler); evaluation stays in float32 (default: none)")
    o.add_argument("--compile", action="store_true",
                   help="torch.compile(fullgraph=True) the training step (forward, loss and backward); the first "
                        "steps pay the compilation; evaluation stays eager")
    o.add_argument("--logger", type=logger_names, default="jsonl", metavar="NAMES",
                   help="comma-separated loggers writing each epoch's record into --out: jsonl (history.jsonl), "
                        "csv (history.csv), tensorboard (tensorboard/; needs pip install 'seqrec[tensorboard]'), "
                        "or none (default: jsonl)")
    e = t.add_argument_group("split and evaluation protocol")
    e.add_argument("--split", choices=["leave-one-out", "temporal", "ratio"], default="leave-one-out",
                   help="leave-one-out (default); temporal: one global time cut, training strictly before it "
                        "(needs timestamps); ratio: per user, chronological shares")
    e.add_argument("--temporal-cut", type=unit_fraction, nargs="+", default=None, metavar="Q",
                   help="--split temporal: the cut as a quantile of all interaction times (default 0.8); a second "
                        "quantile gives a separate test cut (valid in [Q1, Q2), test after Q2)")
    e.add_argument("--ratios", type=unit_fraction, nargs=3, default=None, metavar=("TRAIN", "VALID", "TEST"),
                   help="--split ratio: the three shares, summing to 1 (default 0.8 0.1 0.1)")
    e.add_argument("--negatives", choices=["uniform", "popularity"], default="uniform",
                   help="negatives of the sampled evaluation protocol: uniform among the user's unseen items, or "
                        "popularity-proportional (training counts); named in the protocol card (default: uniform)")
    e.add_argument("--metrics", nargs="+", choices=EXTRA_METRICS, default=[], metavar="NAME",
                   help="metrics beside HR, NDCG and MRR, from the same ranking pass: " + ", ".join(EXTRA_METRICS)
                        + " (Coverage and Gini: full ranking only)")


def _split_spec(args) -> dict:
    """The split options of `seqrec train`, checked together, as the run's spec records them."""
    if args.temporal_cut is not None and args.split != "temporal":
        raise ValueError(f"--temporal-cut applies to --split temporal, not --split {args.split}")
    if args.ratios is not None and args.split != "ratio":
        raise ValueError(f"--ratios applies to --split ratio, not --split {args.split}")
    spec = {"kind": args.split, "negatives": args.negatives}
    if args.split == "temporal":
        cuts = args.temporal_cut or [0.8]
        if len(cuts) > 2:
            raise ValueError(f"--temporal-cut takes one or two quantiles, got {len(cuts)}")
        if len(cuts) == 2 and not cuts[0] < cuts[1]:
            raise ValueError(f"--temporal-cut: the test cut ({cuts[1]}) must come after the first ({cuts[0]})")
        spec["cut"], spec["test_cut"] = cuts[0], (cuts[1] if len(cuts) == 2 else None)
    elif args.split == "ratio":
        ratios = args.ratios or [0.8, 0.1, 0.1]
        if abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(f"--ratios must sum to 1, got {' + '.join(map(str, ratios))} = {sum(ratios):g}")
        spec["ratios"] = list(ratios)
    return spec


def build_split(dataset, spec: dict | None, max_len: int):
    """The split a run's spec names (``spec["data"]["split"]``; None: leave-one-out, as
    runs recorded before the option existed)."""
    from .data.splits import LeaveOneOut, RatioSplit, TemporalSplit

    spec = spec or {"kind": "leave-one-out", "negatives": "uniform"}
    negatives = spec.get("negatives", "uniform")
    if spec["kind"] == "leave-one-out":
        # The original split object where it suffices: the same batches and candidates.
        return dataset.leave_one_out(max_len=max_len) if negatives == "uniform" else \
            LeaveOneOut(dataset, max_len, eval_negatives=negatives)
    if spec["kind"] == "temporal":
        return TemporalSplit.at_quantiles(dataset, spec["cut"], spec.get("test_cut"), max_len=max_len,
                                          eval_negatives=negatives)
    if spec["kind"] == "ratio":
        return RatioSplit(dataset, tuple(spec["ratios"]), max_len=max_len, eval_negatives=negatives)
    raise ValueError(f"unknown split {spec['kind']!r}; the splits are leave-one-out, temporal, ratio")


def _add_download_parser(dsub) -> None:
    from .data.registry import DATASETS

    listing = "; ".join(f"{d.name}: {d.description}" for d in DATASETS.values())
    p = dsub.add_parser(
        "download", help="download a public dataset (" + ", ".join(DATASETS) + ")",
        description="Download a dataset our papers use into DIR/NAME/ (then: seqrec train --data DIR/NAME). "
                    "Resumable (rerun after an interruption), checked against the size and SHA-256 pinned in "
                    f"seqrec.data.registry. Datasets: {listing}.")
    p.add_argument("name", metavar="NAME", help="dataset: " + ", ".join(DATASETS) + " (case-insensitive)")
    p.add_argument("--to", default="data", metavar="DIR", help="parent folder (default: %(default)s). "
                   + NOT_UNDER_TORCHRUN)
    p.add_argument("--no-verify", action="store_true",
                   help="accept files that have no pinned checksum (their SHA-256 is printed); pinned files are "
                        "always checked")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, off in CI and logs)")


def _add_prepare_parser(dsub) -> None:
    p = dsub.add_parser(
        "prepare", help="parse a dataset once into a memory-mapped folder that later runs open in seconds",
        description="Read --data (after --kcore) and write it to --out as NumPy arrays and a checksummed "
                    "manifest; then `seqrec train --data OUT` maps it instead of parsing (every process, DDP "
                    "ranks included, shares one copy in the page cache). OUT is written whole or not at all. "
                    + NOT_UNDER_TORCHRUN)
    _add_data_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it is a prepared dataset")


def _add_eval_block_args(p, saved: bool = False) -> None:
    was = " (default: the run's)" if saved else ""
    p.add_argument("--eval-chunk-size", type=positive_int, default=None, metavar="USERS",
                   help="users per evaluation score block; takes precedence over --eval-memory (the models score "
                        "whole rows: a chunk over the budget is used as given, with a warning)" + was)
    p.add_argument("--eval-memory", type=memory_size, default=None, metavar="SIZE",
                   help="memory budget of the evaluation score blocks, e.g. 2GiB, 512MiB or bytes; sizes users "
                        "per block (at most 1024) when --eval-chunk-size is not given (default: a quarter of the "
                        "available RAM, on CUDA at most half the free device memory)"
                        + ("; alone it replaces the run's chunk size" if saved else ""))


def _add_distributed_arg(p) -> None:
    # [DDP] seqrec.train.distributed
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="data-parallel over torch.distributed (DDP; gloo on the CPU, NCCL on CUDA): the default "
                        "detects torchrun (torchrun --nproc_per_node N --no-python seqrec ...); --batch-size is "
                        "then the global batch, split over the ranks; rank 0 alone writes --out")


def _writer(args, fn, *fn_args):
    """[DDP] ``fn(*fn_args)`` on rank 0 alone (its failure stops every rank); one process: run it."""
    ddp = getattr(args, "ddp", None)
    return fn(*fn_args) if ddp is None else ddp.on_writer(fn, *fn_args)


def _is_writer(args) -> bool:
    ddp = getattr(args, "ddp", None)
    return ddp is None or ddp.is_writer


class _DefaultsHelp(argparse.HelpFormatter):
    """Appends "(default: X)" where the help does not say it and X is not None or a switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


def _add_pretrain_parser(sub) -> None:
    from .models.registry import REGISTRY

    p = sub.add_parser(
        "pretrain", formatter_class=_DefaultsHelp,
        help="self-supervised pretraining (S3-Rec, DSS); fine-tune with `seqrec train --model s3rec --init DIR` "
             "(S3-Rec) or `seqrec train --model dss|sasrec --init DIR` (DSS)",
        description="Pretrain S3-Rec's bidirectional encoder with its four objectives (AAP item-attribute, "
                    "MIP masked item, MAP masked attribute, SP segment), on every prefix of each user's "
                    "training part (valid and test items held out), as the S3-Rec authors; or DSS's encoder "
                    "(--model dss) with seq2item and seq2seq on sliding windows of each training part, split "
                    "at a random point (the DSSRec reading). Writes DIR/pretrain.pt after every epoch "
                    "(atomically) and DIR/pretrain.jsonl (one JSON line per epoch). Model options left unset "
                    "take the --preset's or the paper's values.")
    p.add_argument("--model", default="s3rec", choices=sorted(PRETRAIN_DEFAULTS),
                   help="model to pretrain (default: %(default)s)")
    _add_data_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for pretrain.pt and pretrain.jsonl")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="pretraining epochs; without it the --preset's where it names them (best: 20), else "
                        + _pretrain_defaults_text("epochs"))
    p.add_argument("--keep-every", type=nonneg_int, default=0, metavar="N",
                   help="also keep the weights after every N-th epoch as DIR/pretrain-epoch<epoch>.pt, to "
                        "fine-tune from an earlier point of the same run (`seqrec train --init "
                        "DIR/pretrain-epoch50.pt`); the authors keep every 10th. 0: only the last (default)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="samples per batch " + _pretrain_defaults_text("batch_size"))
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="Adam weight decay (default: %(default)s)")
    for name, label in (("aap", "item-attribute (AAP)"), ("mip", "masked item (MIP)"),
                        ("map", "masked attribute (MAP)"), ("sp", "segment (SP)")):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=True,
                       help=f"{label} objective on/off, for ablations (default: on)")
    _pretrain_options().add_to(p)  # one flag per S3RecConfig / DSSConfig field (seqrec.model_options)
    p.add_argument("--attributes", nargs="+", default=None, metavar="FIELD",
                   help="categorical item fields used as attributes (default: all)")
    p.add_argument("--samples", choices=["prefixes", "users", "windows"], default=None,
                   help="every prefix of each training sequence (the S3-Rec authors'), one sample per user, or "
                        "windows of max-len items --window-step x max-len apart over each training sequence "
                        "(DSSRec's) " + _pretrain_defaults_text("samples"))
    p.add_argument("--window-step", type=float, default=0.5,
                   help="--samples windows: the step between windows as a fraction of --max-len, in (0, 1] "
                        "(default: %(default)s)")
    p.add_argument("--preset", choices=sorted(REGISTRY["s3rec"].presets), default=None,
                   help="named settings (paper: the S3-Rec paper's model; best: the paper's model, 20 epochs, the "
                        "first stage of `seqrec train --model composed --preset best`'s recipe; explicit options "
                        "override them)")
    p.add_argument("--seed", type=seed_int, default=42,
                   help="seeds initialisation, sample order, masking and dropout; 0 <= seed < 2**63 "
                        "(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu; masking always runs on the CPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile(fullgraph=True) the pretraining step (forward, losses and backward)")
    p.add_argument("--autocast", choices=["none", "bf16"], default="none",
                   help="mixed precision of the pretraining forward pass (default: none)")
    p.add_argument("--backend", choices=["seqrec", "reference"], default=None,
                   help="compiled operators (seqrec, default) or their plain-PyTorch references")
    p.add_argument("--resume", action="store_true", help="continue the pretraining saved in --out")
    _add_distributed_arg(p)
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds a pretraining run (its pretrain.pt, "
                        "pretrain.jsonl and snapshots are deleted); without it, and without --resume, such a "
                        "folder is refused")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal, off in CI or when stderr goes to a file)")


def format_table(title: str, metrics: dict, protocol: str) -> str:
    if not metrics:
        return f"{title}\n  protocol: {protocol}"
    keys = list(metrics)
    width = max(8, *(len(k) for k in keys))
    lines = [title, f"  protocol: {protocol}", "  " + " ".join(f"{k:>{width}}" for k in keys),
             "  " + " ".join(f"{metrics[k]:>{width}.4f}" for k in keys)]
    return "\n".join(lines)


def _given_or(value, defaults: dict, name: str):
    """A training setting: the flag's ``value`` if given, else the --preset's (``defaults``),
    else TrainConfig's default."""
    if value is not None:
        return value
    from .train import TrainConfig
    return defaults.get(name, getattr(TrainConfig, name))


def _model_config(args, dataset, init_config: dict | None = None) -> tuple[str, dict]:
    """The model `seqrec train` builds and its config fields: from the model flags, the
    --preset, the --init checkpoint's config and the dataset (seqrec.model_options)."""
    options = _train_options()
    config = options.config(args, init_config)
    config.update(num_items=dataset.num_items, max_len=args.max_len, **options.side_information(args, dataset))
    if init_config:
        config.update(_init_encoder_fields(init_config, options.registration(args.model).config))
    return options.models[args.model], config


def _init_encoder_fields(init_config: dict, config_cls) -> dict:
    """The --init checkpoint's feed-forward width, activation and norm epsilon (every encoder
    tensor must load); a width left at None (4 x hidden size) is written out for a config
    that wants a number (DIF-SR's)."""
    fields = {k: init_config[k] for k in ("inner_size", "hidden_act", "layer_norm_eps") if k in init_config}
    inner = {f.name: f for f in dataclasses.fields(config_cls)}.get("inner_size")
    if (fields.get("inner_size", 0) is None and "hidden_size" in init_config and inner is not None
            and not inner.metadata["seqrec"]["optional"]):
        fields["inner_size"] = 4 * init_config["hidden_size"]
    return fields


def _init_weights(args, model, num_items: int, init_spec: dict, state: dict, path) -> dict:
    """Load --init weights by name into ``model``; print and return what happened."""
    from .models import load_pretrained

    if args.model in PRETRAIN_MODELS:  # the wrong checkpoint is said before any loading report
        if init_spec.get("name") not in (None, args.model):
            raise ValueError(f"--init {path}: a {init_spec.get('name')!r} checkpoint, not an {args.model} "
                             f"pretraining one (seqrec pretrain --model {args.model})")
        pretrained_items = (init_spec.get("config") or {}).get("num_items")
        if pretrained_items is not None and pretrained_items != num_items:
            raise ValueError(f"--init {path}: pretrained on {pretrained_items} items, this dataset has "
                             f"{num_items}; fine-tune on the dataset the model was pretrained on")
    try:
        report = load_pretrained(model, state, strict=not args.init_partial)
    except ValueError as exc:
        raise ValueError(f"--init {path}: {exc}") from None
    print(f"--init {path}:\n{report.describe()}", file=sys.stderr)
    if args.model in PRETRAIN_MODELS:
        if not report.complete or not report.loaded:
            raise ValueError(f"--init {path}: the fine-tune model does not match the pretrained encoder "
                             "(use the same --max-len, --hidden-size, --num-layers, --num-heads); see above")
    return {"path": str(path), **report.to_dict()}


def _fold_dss_scale(model, state: dict, init_spec: dict, path) -> dict:
    """--init-fold-scale: ``state`` with the DSS pretraining's item-score scale folded into
    ``out_norm`` (:func:`seqrec.models.dss.fold_pretraining_scale`), after checking that
    the checkpoint is a DSS pretraining and the model scores its ``out_norm`` output
    against items alone."""
    from .models.dss import fold_pretraining_scale
    from .train.pretrain import CHECKPOINT_KIND

    # The checkpoint's kind (pretraining or training) is not among what _read_init returns:
    # read again, only when the fold is asked for.
    saved = torch.load(path, map_location="cpu", weights_only=False)
    kind = saved.get("kind") if isinstance(saved, dict) else None
    if kind != CHECKPOINT_KIND or init_spec.get("name") != "dss":
        what = f"a {init_spec.get('name')!r} {kind or 'training'} checkpoint" if init_spec else "not a seqrec checkpoint"
        raise ValueError(f"--init-fold-scale: --init {path} is {what}; the scale it folds is that of "
                         "`seqrec pretrain --model dss`")
    if not isinstance(getattr(model, "out_norm", None), torch.nn.LayerNorm):
        raise ValueError(f"--init-fold-scale: {type(model).__name__} has no out_norm to fold the scale into "
                         "(a DSS fine-tune has: --model dss)")
    seq2seq_weight = getattr(model.config, "seq2seq_weight", 0.0)
    if seq2seq_weight:
        raise ValueError(f"--init-fold-scale: the seq2seq term (weight {seq2seq_weight}) compares two out_norm "
                         "outputs, which the fold would scale by 1/hidden size; fine-tune by seq2item alone "
                         "(--preset seq2item-only) or load without folding")
    try:
        return fold_pretraining_scale(state, model.config.hidden_size)
    except ValueError as exc:
        raise ValueError(f"--init {path}: {exc}") from None


def _negatives_arg(text: str) -> str:
    """--train-negatives: a sampler name or a mix, checked while parsing."""
    from .data.negatives import parse_negatives

    try:
        parse_negatives(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_train(args) -> int:
    from .models import build_model, read_pretrained_state
    from .train import TrainConfig, Trainer

    from .train.trainer import RUN_FILES

    if args.init_partial and args.init is None:
        raise ValueError("--init-partial says how to load --init's weights; give --init too")
    if args.init_fold_scale and args.init is None:
        raise ValueError("--init-fold-scale says how to load --init's weights; give --init too")
    previous_run = _writer(args, _check_run_folder, args, RUN_FILES) or []  # [DDP] rank 0 only
    if args.model in PRETRAIN_MODELS and args.init is None:
        raise ValueError(f"--model {args.model} fine-tunes a pretrained model: give --init <folder or "
                         f"pretrain.pt of `seqrec pretrain --model {args.model}`> (without pretraining it is "
                         f"--model {PRETRAIN_MODELS[args.model]})")
    init_state = init_spec = init_path = None
    if args.init is not None:
        init_state, init_spec, init_path = _read_init(args.init, read_pretrained_state)
    split_spec = _split_spec(args)
    dataset = _load(args)
    split = build_split(dataset, split_spec, args.max_len)
    name, config = _model_config(args, dataset, (init_spec or {}).get("config"))
    defaults = _train_options().train_defaults(args)  # the preset's, else the model paper's
    num_negatives = args.num_negatives
    if num_negatives is None:
        num_negatives = 100 if config.get("loss") == "sampled" else defaults["num_negatives"]
    train_config = TrainConfig(
        epochs=_given_or(args.epochs, defaults, "epochs"), lr=args.lr if args.lr is not None else defaults["lr"],
        batch_size=args.batch_size if args.batch_size is not None else defaults["batch_size"], weight_decay=args.weight_decay,
        num_negatives=num_negatives, train_negatives=args.train_negatives,
        log_q={"auto": None, "on": True, "off": False}[args.log_q], sparse_embeddings=args.sparse_embeddings,
        patience=_given_or(args.patience, defaults, "patience"), eval_every=args.eval_every, metric=args.metric, valid_ranking=args.valid_ranking,
        ks=tuple(args.ks), sampled_negatives=args.sampled_negatives, exclude_history=not args.no_exclude_history,
        eval_chunk_size=args.eval_chunk_size, eval_memory=args.eval_memory,
        seed=args.seed, device=args.device, progress=args.progress,
        grad_clip=args.clip_grad_norm, scheduler=args.scheduler, warmup_steps=args.warmup_steps,
        lr_step_epochs=args.lr_step_epochs, lr_gamma=args.lr_gamma, accumulate=args.accumulate,
        autocast=args.autocast, metrics=tuple(args.metrics), distributed=args.distributed,
        compile=args.compile)
    from .train.callbacks import make_loggers

    try:  # a missing tensorboard is said now, before any training
        loggers = make_loggers(args.logger)
    except ImportError as exc:
        raise ValueError(f"--logger {args.logger}: {exc}") from None
    torch.manual_seed(args.seed)  # parameter initialisation
    model = build_model(name, backend=args.backend, attributes=dataset, **config)
    # The whole config, defaults included: a later change of a default cannot change what a
    # checkpoint means (resume and evaluate rebuild the model from it).
    spec = {"name": name, "config": dataclasses.asdict(model.config), "backend": args.backend, "preset": args.preset,
            "data": {"source": args.data, "format": args.format, "kcore": args.kcore, "max_len": args.max_len,
                     "synthetic_users": args.synthetic_users, "synthetic_items": args.synthetic_items,
                     "split": split_spec}}
    if init_state is not None:
        if args.init_fold_scale:
            init_state = _fold_dss_scale(model, init_state, init_spec, init_path)
        spec["init"] = _init_weights(args, model, dataset.num_items, init_spec, init_state, init_path)
        if args.init_fold_scale:
            spec["init"]["folded_scale"] = model.config.hidden_size ** -0.5
        spec["finetune_of"] = args.model if args.model in PRETRAIN_MODELS else None
    trainer = Trainer(model, split, train_config, out_dir=args.out, model_spec=spec, loggers=loggers)
    _writer(args, _clear_run_folder, args, previous_run)  # --overwrite: only now that the new run is ready to start
    if args.resume:
        if trainer.resume():
            print(f"resumed {args.out} after epoch {trainer.epoch}", file=sys.stderr)
    # The whole configuration goes to the run folder, not the terminal.
    num_params = sum(p.numel() for p in model.parameters())
    where = (f"config: {_writer(args, _write_run_config, args, spec, train_config)}" if args.out is not None
             else "--out DIR keeps the run and its config")
    print(f"{dataset!r}; {split.info.name}, max_len {split.max_len}\nmodel {name}, {num_params:,} parameters; "
          f"{where}", file=sys.stderr)
    if hasattr(split, "describe"):  # the splits of seqrec.data.splits carry their protocol card
        print(split.describe(), file=sys.stderr)

    def on_epoch(rec):
        valid = rec.get("valid")
        extra = f" valid {args.metric} {valid[args.metric]:.4f}" if valid else ""
        terms = "".join(f", {k} {v:.4g}" for k, v in rec.get("loss_terms", {}).items())
        terms = f" ({terms[2:]})" if terms else ""
        rate = f" lr {rec['lr']:.3g}" if "lr" in rec else ""  # with a schedule: the epoch's last rate
        print(f"epoch {rec['epoch']:3d} loss {rec['loss']:.4f}{terms}{extra}{rate} ({rec['train_seconds']:.1f}s)",
              file=sys.stderr)

    result = trainer.fit(on_epoch=on_epoch)
    print(f"best epoch {result.best_epoch} by valid {args.metric} ({args.valid_ranking} ranking)")
    print(format_table("test, full ranking", result.test_full, result.protocol_full))
    print(format_table("test, sampled", result.test_sampled, result.protocol_sampled))
    if model.has_interests:
        _print_interest_distinctness(model, split, args.device)
    if args.out is not None and _is_writer(args):
        _print_run_folder(args)
    return 0


RUN_CONFIG = "config.json"


def _command_line(args, drop=(), add=()) -> str:
    """The seqrec command that ran, as a shell line, without the flags in ``drop`` and with ``add``."""
    import shlex

    argv = [a for a in getattr(args, "argv", None) or sys.argv[1:] if a not in drop]
    return shlex.join([_program(), *argv, *(a for a in add if a not in argv)])


def _program() -> str:
    """How this seqrec was started: `.venv/bin/seqrec` from `make run`, else `seqrec`."""
    return sys.argv[0] if os.path.basename(sys.argv[0]) == "seqrec" else "seqrec"


def _write_run_config(args, spec: dict, train_config) -> Path:
    """``--out/config.json``: the command that started the run, the model (every config
    field) and the training settings. A resumed run keeps it (the checkpoint holds what
    --resume changed), so resuming writes nothing but the run's own files."""
    path = Path(args.out) / RUN_CONFIG
    if args.resume and path.exists():
        return path
    write_json(path, {"command": _command_line(args), "model": spec, "train": dataclasses.asdict(train_config)},
               default=str)
    return path


def _print_run_folder(args) -> None:
    """Where the run is and how to go on with it (stderr, like the header: stdout holds the results)."""
    out = Path(args.out)
    files = ", ".join(p.name for p in sorted(out.iterdir()) if not p.name.startswith("."))
    print(f"\nrun folder: {out} ({files})\n"
          f"  evaluate it:  {_program()} evaluate --checkpoint {out}\n"
          f"  resume it (after a kill, or with a larger --epochs):  "
          f"{_command_line(args, drop=('--overwrite',), add=('--resume',))}", file=sys.stderr)


def cmd_evaluate(args) -> int:
    from .models import build_model
    from .train import TrainConfig, Trainer, load_checkpoint

    folder = Path(args.checkpoint)
    if folder.is_dir() and (folder / "pretrain.pt").exists() and not (folder / "checkpoint.pt").exists():
        raise ValueError(f"{folder}: holds a pretraining checkpoint (pretrain.pt), nothing to evaluate; fine-tune "
                         "it first (seqrec train --model s3rec --init ...)")
    state = load_checkpoint(args.checkpoint)
    if "train_config" not in state:
        raise ValueError(f"{args.checkpoint}: a pretraining checkpoint, nothing to evaluate; fine-tune it first "
                         f"(seqrec train --model {state.get('model_spec', {}).get('name', 's3rec')} --init ...)")
    spec = state["model_spec"]
    data = spec["data"]
    source = args.data if args.data is not None else data["source"]
    dataset = load_dataset(source, args.format or data["format"], kcore=data["kcore"],
                           synthetic_size=(data["synthetic_users"], data["synthetic_items"]))
    trained_items = spec["config"].get("num_items")
    if trained_items is not None and trained_items != dataset.num_items:
        raise ValueError(f"{args.checkpoint}: the model was trained on {trained_items} items, the data "
                         f"({source}) has {dataset.num_items}; evaluate it on its own dataset")
    # The dataset's side tables serve checkpoints written before models saved theirs;
    # a checkpoint that holds them replaces them on load.
    model = build_model(spec["name"], backend=spec.get("backend"), attributes=dataset, **spec["config"])
    model.load_state_dict(state["best_state"] or state["model"])
    cfg = dict(state["train_config"])
    cfg["device"] = args.device
    cfg["autocast"] = "none"  # a training setting (fp16 would refuse a CPU device); evaluation runs in float32
    cfg["distributed"] = args.distributed  # [DDP] evaluation sharded over the ranks
    if args.eval_chunk_size is not None or args.eval_memory is not None:
        cfg["eval_chunk_size"], cfg["eval_memory"] = args.eval_chunk_size, args.eval_memory
    trainer = Trainer(model, build_split(dataset, data.get("split"), data["max_len"]), TrainConfig(**cfg))
    # Say which weights these are: an unfinished run (killed, or still training) is
    # evaluated at its best epoch so far.
    finished = state["epoch"] >= cfg["epochs"] or (cfg["patience"] and state["bad_evals"] >= cfg["patience"])
    which = (f"best epoch {state['best_epoch']} by valid {cfg['metric']}" if state["best_state"] is not None
             else "last epoch (no validation yet)")
    print(f"{spec['name']} after {state['epoch']} of {cfg['epochs']} epochs"
          f"{'' if finished else ' (unfinished run)'}: weights of the {which}")
    print(format_table("test, full ranking", trainer.evaluate("test", "full"), trainer.protocol("full").describe()))
    print(format_table("test, sampled", *trainer.evaluate_sampled_or_why("test")))
    if model.has_interests:
        _print_interest_distinctness(model, trainer.split, args.device)
    return 0


def _print_interest_distinctness(model, split, device: str) -> None:
    """Multi-interest models (SINE, DSS): how distinct a user's K interests are on the test inputs."""
    from .eval.interests import interest_distinctness

    batch = split.eval_batch("test")
    result = interest_distinctness(model.to(device), batch.input_ids, batch.lengths)
    per_user = result["per_user"]
    quartiles = ", ".join(f"{q:.3f}" for q in np.quantile(per_user, [0.25, 0.5, 0.75])) if len(per_user) else "-"
    print(f"interests (test inputs, {len(per_user)} users): mean pairwise cosine between a user's "
          f"K interests {result['mean_cosine']:.4f} (quartiles {quartiles}; 1 = identical, 0 = orthogonal); "
          f"between two users' interests {result['cross_user_cosine']:.4f}")


def cmd_pretrain(args) -> int:
    from .models import build_model
    from .models.s3rec import OBJECTIVES
    from .train.pretrain import PRETRAIN_CHECKPOINT, RUN_FILES, PretrainConfig, Pretrainer

    previous_run = _writer(args, _check_run_folder, args, RUN_FILES) or []  # [DDP] rank 0 only
    if args.model != "s3rec":  # the objective switches are S3-Rec's (its weights are config fields)
        switched = [f"--no-{name}" for name in OBJECTIVES if not getattr(args, name)]
        if switched:
            raise ValueError(f"{', '.join(switched)}: S3-Rec options, not of --model {args.model}")
    options = _pretrain_options()
    # epochs, batch size, samples: the flag's, else the --preset's (best: 20 epochs), else the model's
    preset_settings = options.preset(args).train
    unapplied = sorted(set(preset_settings) - set(PRETRAIN_DEFAULTS[args.model]))
    if unapplied:  # a preset's setting that would be silently ignored (flags with non-None defaults)
        raise ValueError(f"--preset {args.preset}: pretraining presets name only {sorted(PRETRAIN_DEFAULTS[args.model])}, "
                         f"not {unapplied}")
    for name, value in {**PRETRAIN_DEFAULTS[args.model], **preset_settings}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    dataset = _load(args)
    config = options.config(args)
    config.update(num_items=dataset.num_items, max_len=args.max_len, **options.side_information(args, dataset))
    if args.model == "s3rec":
        for name in OBJECTIVES:  # --no-NAME switches an objective off, whatever its weight
            if not getattr(args, name):
                config[f"{name}_weight"] = 0.0
    pretrain_cfg = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  weight_decay=args.weight_decay, samples=args.samples, seed=args.seed,
                                  device=args.device, progress=args.progress, keep_every=args.keep_every,
                                  window_step=args.window_step, distributed=args.distributed,
                                  compile=args.compile, autocast=args.autocast)
    torch.manual_seed(args.seed)  # parameter initialisation
    model = build_model(args.model, backend=args.backend, **config)
    model.attach_dataset(dataset)
    spec = {"name": args.model, "config": dataclasses.asdict(model.config), "backend": args.backend,
            "data": {"source": args.data, "format": args.format, "kcore": args.kcore, "max_len": args.max_len,
                     "synthetic_users": args.synthetic_users, "synthetic_items": args.synthetic_items}}
    trainer = Pretrainer(model, dataset, pretrain_cfg, out_dir=args.out, model_spec=spec)
    _writer(args, _clear_run_folder, args, previous_run)
    if args.resume and trainer.resume():
        print(f"resumed {args.out} after epoch {trainer.epoch}", file=sys.stderr)
    print(f"{dataset!r}; {len(trainer.samples)} pretraining samples ({args.samples}), "
          f"{trainer.num_batches()} batches of {args.batch_size}; model {args.model} {config}", file=sys.stderr)

    def on_epoch(rec):
        parts = ", ".join(f"{k} {v:.4g}" for k, v in rec.items() if k not in ("epoch", "loss", "seconds", "samples"))
        print(f"pretrain epoch {rec['epoch']:3d} loss {rec['loss']:.4g} ({parts}) ({rec['seconds']:.1f}s)",
              file=sys.stderr)

    trainer.fit(on_epoch=on_epoch)
    # Those on disk: a run resumed with another --keep-every kept other epochs before.
    kept = [str(path) for path in map(trainer.snapshot_path, range(1, trainer.epoch + 1))
            if _is_writer(args) and path.exists()]
    finetune = args.model if args.model in PRETRAIN_MODELS else f"{args.model}|sasrec"
    if args.preset == "best":  # the recipe's second stage; its fusion reads the fields pretrained on
        fields = " ".join(model.config.attribute_fields) or "FIELD"
        finetune = f"composed --preset best --attributes {fields}"
    print(f"wrote {Path(args.out) / PRETRAIN_CHECKPOINT} (epoch {trainer.epoch}); fine-tune with: seqrec train "
          f"--model {finetune} {_data_flags(args)} --init {args.out}"
          + (f"\nearlier epochs kept: {', '.join(kept)} (give one to --init)" if kept else ""))
    return 0


def _run_files(folder: Path, names: re.Pattern) -> list[Path]:
    return sorted(p for p in folder.iterdir() if names.fullmatch(p.name) and p.is_file()) if folder.is_dir() else []


def _check_run_folder(args, names: re.Pattern) -> list[Path]:
    """The run-folder rules of train / pretrain, checked before any work (the caller holds
    the folder's lock): a folder that holds a run (files matching ``names``) is continued
    with --resume or replaced with --overwrite, never silently overwritten; temporary files
    that killed writes left behind are removed. Returns the run's files (for --overwrite)."""
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite discards it: give one of them")
    if args.out is None:
        if args.resume or args.overwrite:
            raise ValueError(f"--{'resume' if args.resume else 'overwrite'} needs --out (the run folder)")
        return []
    folder = Path(args.out)
    for stale in stale_temp_files(folder, names):
        stale.unlink()  # only ours (atomic_write's names of this run's files), under the lock
        print(f"removed {stale}: the temporary file of a write that was killed", file=sys.stderr)
    existing = _run_files(folder, names)
    if existing and not args.resume and not args.overwrite:
        raise ValueError(f"--out {folder} already holds a run ({', '.join(p.name for p in existing)}): continue it "
                         f"with --resume, or discard it and start afresh with --overwrite")
    return existing if args.overwrite else []


def _clear_run_folder(args, files: list[Path]) -> None:
    """--overwrite: delete the previous run's files, so none of them outlives the new run's start."""
    for path in files:
        path.unlink(missing_ok=True)
    if files:
        print(f"--overwrite: removed {', '.join(p.name for p in files)} of the previous run in {args.out}",
              file=sys.stderr)


def cmd_export(args) -> int:
    from .saved import export_run

    folder = export_run(args.checkpoint, args.out, data=args.data, format=args.format)
    print(f"saved {folder}; load it with: seqrec.from_pretrained({str(folder)!r})")
    return 0


def _read_init(spec: str, read_pretrained_state):
    """--init's weights: the file's checksum checked before it is read, its tensors after."""
    from .train.pretrain import PRETRAIN_CHECKPOINT
    from .train.trainer import CHECKPOINT_NAME, check_finite_state

    path = Path(spec)
    if path.is_dir():  # the file read_pretrained_state picks, in its order
        path = next((path / n for n in (PRETRAIN_CHECKPOINT, CHECKPOINT_NAME) if (path / n).exists()), path)
    if path.is_file() and not verify_torch_file(path):
        warnings.warn(f"{path}: has no checksum (written before seqrec checksummed its files, or by other code); "
                      "its content is not verified")
    state, init_spec, init_path = read_pretrained_state(path if path.is_file() else spec)
    check_finite_state(init_path, {"model": state})
    return state, init_spec, init_path


def _load(args):
    return load_dataset(args.data, args.format, kcore=args.kcore,
                        synthetic_size=(args.synthetic_users, args.synthetic_items))


def format_stats(stats: dict) -> str:
    """``SequenceDataset.stats()`` as a short aligned summary, numbers rounded for reading."""
    q1, median, q3 = stats["length_quartiles"]
    rows = [("dataset", stats["name"]), ("users", f"{stats['users']:,}"), ("items", f"{stats['items']:,}"),
            ("interactions", f"{stats['interactions']:,}"),
            ("sequence length", f"mean {stats['avg_length']:.1f}, min {stats['min_length']}, quartiles "
                                f"{q1:g} / {median:g} / {q3:g}, max {stats['max_length']}"),
            ("density", f"{100 * stats['density']:.3g}% of user-item pairs")]
    fields = [(k[len("attr:"):], v) for k, v in stats.items() if k.startswith("attr:")]
    rows += [("attribute field" if i == 0 else "", f"{name}: {text}") for i, (name, text) in enumerate(fields)]
    if not fields:
        rows.append(("attribute fields", "none"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)


def cmd_data_stats(args) -> int:
    dataset = _load(args)
    print(format_stats(dataset.stats()))
    if args.baseline:
        from .eval.baselines import popularity_baseline

        results = popularity_baseline(dataset.leave_one_out(max_len=args.max_len), ks=tuple(args.ks),
                                      reference=False)
        print(format_table("popularity baseline (items ranked by their training interactions), test set",
                           results["metrics"]["rank_topk"], results["protocol"]))
    return 0


def cmd_data_download(args) -> int:
    from .data.download import DownloadError, download_dataset
    from .data.registry import find_dataset

    source = find_dataset(args.name)
    try:
        folder = download_dataset(source.name, args.to, verify=not args.no_verify, progress=args.progress)
    except DownloadError as exc:
        print(f"seqrec data download: error: {exc}", file=sys.stderr)
        return 2
    print(f"{source.name} is in {folder}; try: seqrec data stats --data {folder}  /  "
          f"seqrec train --model sasrec --data {folder} --out runs/{source.name.lower()}")
    return 0


def cmd_data_prepare(args) -> int:
    dataset = _load(args)
    try:
        out = dataset.prepare(args.out, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    print(f"{dataset!r} prepared in {out}; use it with --data {out}")
    return 0


def _cli_warnings(command: str):
    """``warnings.showwarning`` for the commands: seqrec's own warnings read as one line,
    ``seqrec <command>: warning: ...``, like its errors (the source line they were raised
    from means nothing to a command-line user); any other warning shows as usual."""
    package = os.path.dirname(os.path.abspath(__file__))
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(filename).startswith(package + os.sep):
            print(f"seqrec {command}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def check_device(name: str) -> None:
    """--device must name a device this torch can allocate on: say so in one line rather
    than with the traceback of the first tensor moved there."""
    try:
        torch.empty(0, device=torch.device(name))
    except (RuntimeError, AssertionError) as exc:  # unknown type; CUDA/MPS not built or absent
        text = str(exc).strip()
        first_sentence = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise ValueError(f"--device {name}: not usable with this torch ({torch.__version__}): "
                         f"{first_sentence}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to print a resume command
    # train / pretrain hold their --out folder until they return: one writer per run folder.
    writes_folder = args.command in ("train", "pretrain") and args.out is not None
    if args.command in ("train", "evaluate", "pretrain") and os.environ.get("SEQREC_REUSE_FREED_MEMORY") != "0":
        reuse_freed_memory()  # CPU steps stop page-faulting their large matrices in again
    args.ddp = None
    try:
        # [DDP] under torchrun: one process group per command; rank 0 alone locks the run folder
        # and prints (the other ranks print only their errors).
        args.ddp = _setup_distributed(args)
        with warnings.catch_warnings(), _quiet_rank(args.ddp), \
                (_writer(args, lock_run_folder, args.out) or contextlib.nullcontext() if writes_folder
                 else contextlib.nullcontext()):
            warnings.showwarning = _cli_warnings(args.command)
            if args.command == "export" or (args.command == "data" and args.data_command in ("prepare", "download")):
                _refuse_under_torchrun(args)
            if getattr(args, "device", None) is not None:
                check_device(args.device)
            if args.command == "train":
                return cmd_train(args)
            if args.command == "evaluate":
                return cmd_evaluate(args)
            if args.command == "pretrain":
                return cmd_pretrain(args)
            if args.command == "export":
                return cmd_export(args)
            if args.command == "data" and args.data_command == "stats":
                return cmd_data_stats(args)
            if args.command == "data" and args.data_command == "download":
                return cmd_data_download(args)
            if args.command == "data" and args.data_command == "prepare":
                return cmd_data_prepare(args)
    except (DataError, FileNotFoundError, ValueError) as exc:  # the input's fault
        print(f"seqrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FloatingPointError, NoSpaceError) as exc:  # the run failed; what is on disk is intact
        print(f"seqrec {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        from .train.distributed import RankZeroFailed

        if isinstance(exc, RankZeroFailed):  # [DDP] another rank: rank 0 prints why
            return 1
        raise
    finally:
        if args.ddp is not None:
            args.ddp.close()
    return 1


# [DDP] What `seqrec export`, `seqrec data prepare` and `seqrec data download` say in --help,
# and do under torchrun.
NOT_UNDER_TORCHRUN = ("It writes one folder in one process: not under torchrun (with several processes it is "
                      "refused, rather than having every rank write the same folder); run it once, then start "
                      "the training under torchrun.")


def _refuse_under_torchrun(args) -> None:
    """[DDP] ``seqrec export`` / ``seqrec data prepare`` / ``seqrec data download`` are
    one-process commands: every rank
    of a torchrun launch would write the same output folder, so a world of several
    processes is refused (ValueError: exit 2 on every rank, nothing written)."""
    from .train.distributed import torchrun_world

    world = torchrun_world()
    if world is not None and world[1] > 1:
        name = "export" if args.command == "export" else f"data {args.data_command}"
        raise ValueError(f"seqrec {name} runs under torchrun here (WORLD_SIZE={world[1]}, RANK={world[0]}), where "
                         f"every rank would write the same output; it is a one-process command: run it once, "
                         f"without torchrun (seqrec {name} ...)")


def _setup_distributed(args):
    """[DDP] The command's :class:`~seqrec.train.distributed.Distributed` (None: one process)."""
    if args.command not in ("train", "evaluate", "pretrain"):
        return None
    from .train.distributed import Distributed

    return Distributed.setup(args.distributed, args.device)


def _quiet_rank(ddp):
    """[DDP] ranks other than 0 print nothing but their errors (main prints those outside this)."""
    if ddp is None or ddp.is_writer:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    sink = stack.enter_context(open(os.devnull, "w"))
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(contextlib.redirect_stderr(sink))
    return stack


if __name__ == "__main__":
    sys.exit(main())
