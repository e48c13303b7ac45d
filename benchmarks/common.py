"""Shared benchmark helpers: timing medians, peak memory in a fresh process, tables."""
from __future__ import annotations

import os
import statistics
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
