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
