"""Benchmark: full-softmax cross-entropy over the item table, forward + backward:
seqrec.models.losses.softmax_nll vs F.cross_entropy(hidden @ weight.T, target).

Cases: a Beauty training batch's real positions (N = 2000, V = 12,101 items) at SASRec's
hidden size (64) and DIF-SR's paper size (256). Median over --repeats steps after
warm-up, the providers alternating within each repeat; "saved" is what autograd keeps
between forward and backward (saved_tensors_hooks, distinct storages).

    python benchmarks/bench_softmax_nll.py [--repeats 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from common import print_table, saved_bytes

N, V = 2000, 12101


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from seqrec.models.losses import softmax_nll

    print(f"N {N} positions x V {V} items, float32, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"median of {args.repeats} forward+backward steps (mean reduction)")
    rows = []
    for d in (64, 256):
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(N, d, generator=gen).requires_grad_()
        weight = (torch.randn(V, d, generator=gen) * 0.1).requires_grad_()
        target = torch.randint(0, V, (N,), generator=gen)
        providers = {"seqrec": lambda: softmax_nll(hidden, weight, target).mean(),
                     "torch": lambda: F.cross_entropy(hidden @ weight.t(), target)}
        assert abs(providers["seqrec"]().item() - providers["torch"]().item()) < 1e-4  # same loss
        times = {name: [] for name in providers}
        for r in range(args.repeats + 2):
            for name, fn in providers.items():
                start = time.perf_counter()
                fn().backward()
                elapsed = time.perf_counter() - start
                hidden.grad = weight.grad = None
                if r >= 2:
                    times[name].append(elapsed)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        saved = {name: saved_bytes(fn) / 2**20 for name, fn in providers.items()}
        rows.append([d, med["seqrec"], med["torch"], f"{med['torch'] / med['seqrec']:.2f}x", saved["seqrec"],
                     saved["torch"]])
    print_table("forward+backward (ms) and MiB saved for the backward",
                ["hidden", "seqrec ms", "torch ms", "speed-up", "seqrec saved MiB", "torch saved MiB"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
