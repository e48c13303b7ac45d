"""Benchmark: dropout forward + backward, seqrec's hashed-mask op vs torch.nn.functional.dropout.

Cases: the hidden-dropout tensors of our models' training steps (real positions only, as
the models pack them): SASRec/S3-Rec on Beauty ([2000, 64], hidden 64), DIF-SR's paper
size ([2000, 256]), and one large tensor ([256 * 50, 256]).

Timing: one step = forward, backward of a random gradient, in float32. Median over
--repeats steps after warm-up; the providers alternate within each repeat so load
changes on a shared machine hit both. "saved" is what autograd keeps between forward and
backward (distinct storages: the mask for torch, the seed for seqrec).

    python benchmarks/bench_dropout.py [--repeats 50] [--threads 1] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from common import print_table, saved_bytes

CASES = {"sasrec-beauty": (2000, 64), "difsr-paper": (2000, 256), "large": (256 * 50, 256)}
P = 0.5


def _step(fn, x, grad):
    out = fn(x)
    out.backward(grad)
    x.grad = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipping --device cuda")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from seqrec.ops import dropout

    providers = {"seqrec": lambda t: dropout(t, P), "torch": lambda t: F.dropout(t, P, training=True)}
    print(f"dropout p={P}, float32, device {args.device}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; median of {args.repeats} forward+backward steps")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    rows = []
    for case, shape in CASES.items():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(args.device).requires_grad_()
        grad = torch.randn(shape, generator=gen).to(args.device)
        times = {name: [] for name in providers}
        for _ in range(3):
            for fn in providers.values():
                _step(fn, x, grad)
        for _ in range(args.repeats):
            for name, fn in providers.items():
                sync()
                start = time.perf_counter()
                _step(fn, x, grad)
                sync()
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        saved = {name: saved_bytes(lambda: fn(x)) for name, fn in providers.items()}
        rows.append([case, "x".join(map(str, shape)), med["seqrec"], med["torch"],
                     f"{med['torch'] / med['seqrec']:.1f}x", saved["seqrec"], saved["torch"]])
    print_table("forward+backward (ms) and bytes saved for the backward",
                ["case", "shape", "seqrec ms", "torch ms", "speed-up", "seqrec saved B", "torch saved B"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
