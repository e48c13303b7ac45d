"""Benchmark: forward + backward of one DIF-SR attention layer, dif_attention vs plain PyTorch.

Problem (the issue's): batch 256, n 50, 8 heads, hidden 256 (item head size 32), one
attribute of size 64 (head size 8) and DIF-SR's position scores (head size 32, shared by
the batch): S = 3 score sources, fusion gate (and sum), causal + left padding, attention
dropout off (--dropout to change; both providers then draw the same hashed mask).
Inputs are the strided [B, H, n, d] head views of [B, n, H*d] projections, leaf tensors
that require grad; the timed step is ``out = attention(...); out.backward(g)``
(g fixed), i.e. the op's forward and backward and nothing of the projections.

Providers (each in a fresh subprocess, same seeded inputs):
  seqrec      torch.ops.seqrec.dif_attention (C++ kernel, per (b, h) block, nothing of
              size B*H*n*n kept for the backward)
  reference   seqrec.ops.reference.dif_attention: the same math in plain PyTorch
              (stacked [B, H, n, S, n] scores, fusion, softmax, autograd)
  compiled    (optional) torch.compile of the reference (inductor; slow to compile)

Padding (--lengths): ``full`` = every sequence has 50 real items (no padding; the
kernel's trimming of padded rows/keys cannot help: the worst case for seqrec), and
``beauty`` = lengths drawn like Amazon Beauty's (min 5, mean ~8.9, capped at 50).

Timing: median over --repeats runs after one warm-up, torch's default threads: wall
time, and the process's CPU time (all threads; on a machine shared with other jobs the
wall time also counts the time spent waiting for a core, the CPU time does not).
Peak memory: in the provider's own process, ru_maxrss at the end minus the resident set
(/proc/self/statm) right after the inputs were built, i.e. every byte the forward +
backward made resident on top of its inputs at the high-water mark (activations saved
for the backward, temporaries, gradients). On CUDA: max_memory_allocated above the
inputs (a warm-up on a 2-row batch runs before the baseline, so code pages, thread
pools and BLAS buffers are not counted). "max rel diff" compares out and every input
gradient with the reference's.

    python benchmarks/bench_dif_attention.py [--repeats 5] [--fusions gate,sum]
        [--lengths full,beauty] [--providers seqrec,reference] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

from common import median_seconds, print_table, rss_bytes, run_child


def make_inputs(args, fusion: str, lengths: str):
    import torch

    import seqrec.ops as ops

    gen = torch.Generator().manual_seed(0)
    B, n, H, D, A = args.batch, args.n, args.heads, args.hidden, args.attr
    dh, da = D // H, A // H
    dev = args.device

    def heads(d):  # a [B, n, H*d] projection viewed as [B, H, n, d] (strided, like a model's)
        x = torch.randn(B, n, H * d, generator=gen) * 0.5
        return x.to(dev).view(B, n, H, d).transpose(1, 2).requires_grad_()

    q, k, v = heads(dh), heads(dh), heads(dh)
    aq, ak = heads(da), heads(da)
    pq = (torch.randn(H, n, dh, generator=gen) * 0.5).to(dev).requires_grad_()  # position: batch-shared
    pk = (torch.randn(H, n, dh, generator=gen) * 0.5).to(dev).requires_grad_()
    if lengths == "full":
        real = torch.full((B,), n)
    else:  # Beauty-like: 5-core minimum, geometric tail, mean ~8.9
        real = (4 + torch.empty(B).geometric_(1 / 4.9, generator=gen)).clamp(max=n).long()
    kpm = (torch.arange(n)[None, :] >= (n - real)[:, None]).to(dev)
    fp = [t.to(dev).requires_grad_() for t in ops.init_fusion_params(fusion, n, 3, generator=gen)]
    grad = torch.randn(B, H, n, dh, generator=gen).to(dev)
    leaves = [q, k, v, pq, aq, pk, ak, *fp]
    call = dict(q=q, k=k, v=v, side_q=[pq, aq], side_k=[pk, ak], fusion=fusion, fusion_params=fp,
                key_padding_mask=kpm, causal=True, dropout_p=args.dropout, training=args.dropout > 0, seed=123)
    return call, leaves, grad, float(real.float().mean())


def run_provider(args) -> dict:
    import torch

    import seqrec.ops as ops
    from seqrec.ops import reference

    call, leaves, grad, mean_len = make_inputs(args, args.fusion, args.lengths_one)
    if args.provider == "seqrec":
        fn = lambda **kw: ops.dif_attention(**kw, backend="seqrec")  # noqa: E731
    elif args.provider == "reference":
        fn = reference.dif_attention
    else:
        fn = torch.compile(reference.dif_attention, dynamic=False)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    # Warm-up on a tiny batch before the baseline: code pages, thread pools and BLAS
    # buffers then count as baseline, not as the provider's memory.
    tiny = argparse.Namespace(**{**vars(args), "batch": 2})
    tiny_call, _, tiny_grad, _ = make_inputs(tiny, args.fusion, args.lengths_one)
    fn(**tiny_call).backward(tiny_grad)
    del tiny_call, tiny_grad
    if args.device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = rss_bytes()

    cpu_times = []

    def step():
        for t in leaves:
            t.grad = None
        start = time.process_time()
        out = fn(**call)
        out.backward(grad)
        sync()
        cpu_times.append(time.process_time() - start)
        return out

    med, times = median_seconds(step, repeats=args.repeats, warmup=1)
    cpu_med = statistics.median(cpu_times[1:])
    peak = (torch.cuda.max_memory_allocated() - base if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss)
    out = step().detach()
    torch.save([out.cpu()] + [t.grad.cpu() for t in leaves], args.dump)
    return {"provider": args.provider, "median_s": med, "times": times, "cpu_s": cpu_med, "peak_bytes": peak,
            "threads": torch.get_num_threads(), "mean_len": mean_len}


def max_rel_diff(a_path: str, b_path: str) -> float:
    """max over out and the gradients of max|x - ref| / max|ref|, with max|ref| floored at
    1e-3 x the largest of them (gate's b2 cancels in the softmax: its gradient is rounding
    noise around 0 in both providers)."""
    import torch

    a, b = torch.load(a_path), torch.load(b_path)
    floor = 1e-3 * max(float(y.abs().max()) for y in b)
    return max(float((x - y).abs().max()) / max(float(y.abs().max()), floor) for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--attr", type=int, default=64, help="attribute embedding size")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--fusions", default="gate,sum")
    parser.add_argument("--lengths", default="full,beauty")
    parser.add_argument("--providers", default="seqrec,reference")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--provider", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--fusion", help=argparse.SUPPRESS)
    parser.add_argument("--lengths-one", help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("skipped: --device cuda but no CUDA device is available")
            return 0
        if not torch._C._dispatch_has_kernel_for_dispatch_key("seqrec::dif_attention", "CUDA"):
            print("note: seqrec was built without a CUDA dif_attention kernel; timing the reference only")
            args.providers = ",".join(p for p in args.providers.split(",") if p != "seqrec") or "reference"
    if args.provider:
        print(json.dumps(run_provider(args)))
        return 0

    providers = args.providers.split(",")
    rows, threads = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for lengths in args.lengths.split(","):
            for fusion in args.fusions.split(","):
                res = {}
                for provider in providers:
                    dump = os.path.join(tmp, f"{provider}-{fusion}-{lengths}.pt")
                    res[provider] = run_child(__file__, [*argv, "--provider", provider, "--fusion", fusion,
                                                         "--lengths-one", lengths, "--dump", dump])
                    res[provider]["dump"] = dump
                base = res.get("reference", res[providers[0]])
                for provider in providers:
                    r = res[provider]
                    threads = r["threads"]
                    diff = max_rel_diff(r["dump"], base["dump"])
                    rows.append([lengths, f"{r['mean_len']:.1f}", fusion, provider, r["median_s"] * 1e3,
                                 base["median_s"] / r["median_s"], r["cpu_s"] * 1e3, base["cpu_s"] / r["cpu_s"],
                                 r["peak_bytes"] / 2**20,
                                 base["peak_bytes"] / max(r["peak_bytes"], 1), f"{diff:.1e}"])
    B, n, H, D, A = args.batch, args.n, args.heads, args.hidden, args.attr
    print(f"dif_attention fwd+bwd: B={B} n={n} H={H} hidden={D} (head {D // H}), position (head {D // H}) + "
          f"1 attribute of size {A} (head {A // H}), causal, dropout {args.dropout}, device {args.device}, "
          f"{threads} threads")
    print_table(f"median of {args.repeats} (after 1 warm-up); peak = high-water RSS above the inputs, own process",
                ["lengths", "mean len", "fusion", "provider", "wall ms", "speed-up", "cpu ms", "cpu speed-up",
                 "peak MiB", "mem ref/x",
                 "max rel diff"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
