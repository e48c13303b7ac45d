"""Shared benchmark helpers: timing medians, fresh child processes and their memory, tables."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEQREC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def rss_bytes() -> int:
    """Resident memory of this process now (/proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(script: str, args: list[str]) -> dict:
    """One run of a benchmark in a fresh process (``python script *args``, its child
    mode): the JSON object on the last line it prints. A failed child's output is printed
    and its exit status raised as SystemExit, which ends the benchmark."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_children(argv, *, doc: str, script: str, models: list[str], default_models: list[str],
                   default_batches: int, run_model: Callable, row: Callable[[dict], list]):
    """The driver of a benchmark that times each model in a fresh process.

    Parses the shared options (``--data``, ``--models``, ``--batches``, ``--repeats``,
    ``--threads``; ``doc`` is the help text). In child mode (``--model NAME``, passed by
    the parent) prints ``run_model(args)`` as one JSON line and returns None; without the
    dataset, says it skipped and returns None. Else runs one child per model and returns
    ``(args, rows)``, ``row(result)`` per model, each row also printed to stderr as it
    comes."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "Beauty"))
    parser.add_argument("--models", nargs="+", default=default_models, choices=models)
    parser.add_argument("--batches", type=int, default=default_batches, help="training batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.model:
        print(json.dumps(run_model(args)))
        return None
    if not os.path.isdir(args.data):
        print(f"skipped: no dataset at {args.data} (set SEQREC_SHARED_DATA)")
        return None
    rows = []
    for name in args.models:
        result = run_child(script, ["--model", name, "--data", args.data, "--batches", str(args.batches),
                                    "--repeats", str(args.repeats), "--threads", str(args.threads)])
        rows.append(row(result))
        print(rows[-1], file=sys.stderr, flush=True)
    return args, rows


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    print(title)
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for r in rows:
        print("  " + "  ".join(f"{_fmt(c):>{w}}" for c, w in zip(r, widths)))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes autograd keeps between the forward ``fn()`` and its backward: the distinct
    storages of the saved tensors (saved_tensors_hooks), inputs included."""
    sizes: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        sizes.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(sizes.values())
