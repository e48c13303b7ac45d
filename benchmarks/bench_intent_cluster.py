"""Benchmark: intent_cluster forward + backward, fused kernel vs the plain-PyTorch reference.

Cases (--cases, comma-separated):
  sine   the target: B 1024, n 50, D 128, L 500 prototypes, top-K = 4 activated per row
         (`active` + sigmoid `active_scale`), per-concept weights [B, K, n]
  dss    no `active`: softmax over all L = 8 prototypes, weights [B, n]
  dense  no `active` with L = 500 (the probabilities are an [B, n, L] output here)

Providers (--providers), each case and provider in its own fresh subprocess, same seeded
inputs: seqrec (the C++ op), reference (seqrec.ops.reference, what one writes in plain
PyTorch), compile (torch.compile of the reference with inductor; slow to build on 2 cores,
so not run by default).

Inputs: left-padded sequences with lengths uniform in [1, n], padded rows of x zero (as an
embedding with padding_idx 0 gives), prototypes N(0, 1), active = top-K of random concept
scores, active_scale = sigmoid of those scores, weights = masked softmax of random logits.
x, prototypes, active_scale and weights require grad; the backward gets random
gradients for both outputs (intents and probs), as in SINE where both feed the loss.

Timing: one step = forward, backward of both outputs, grads reset to None. Median over
--repeats steps after one warm-up step, torch's default threads (2 on the CI box).
Peak memory (CPU): in the provider's own process, ru_maxrss at the end minus the resident
set (/proc/self/statm) right after the inputs and output gradients were built: every byte
the steps made resident on top of their inputs, at the high-water mark. This counts what
both providers must produce (outputs, input gradients) as well as their intermediates.
"saved" is the exact size of the tensors autograd keeps between forward and backward
(saved_tensors_hooks, distinct storages, inputs included). On CUDA: max_memory_allocated
above the inputs.

    python benchmarks/bench_intent_cluster.py [--cases sine,dss] [--repeats 10]
        [--providers seqrec,reference] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys

from common import median_seconds, print_table, rss_bytes, run_child, saved_bytes

CASES = {
    "sine": dict(L=500, K=4, active=True, weights="per_prototype"),
    "dss": dict(L=8, K=8, active=False, weights="shared"),
    "dense": dict(L=500, K=500, active=False, weights="shared"),
}


def make_inputs(args, case, device):
    import torch

    cfg = CASES[case]
    g = torch.Generator().manual_seed(0)
    B, n, D, L, K = args.batch, args.n, args.dim, cfg["L"], cfg["K"]
    lengths = torch.randint(1, n + 1, (B,), generator=g)
    mask = torch.arange(n)[None, :] >= (n - lengths)[:, None]  # left padding
    x = torch.randn(B, n, D, generator=g) * mask[..., None]
    protos = torch.randn(L, D, generator=g)
    kw = {}
    if cfg["active"]:
        top = torch.randn(B, L, generator=g).topk(K, dim=1)
        kw["active"] = top.indices.to(device)
        kw["active_scale"] = torch.sigmoid(top.values)
    logits = torch.randn(B, K, n, generator=g).masked_fill(~mask[:, None, :], float("-inf"))
    if cfg["weights"] == "per_prototype":
        kw["weights"] = torch.softmax(logits, dim=-1)
    else:
        kw["weights"] = torch.softmax(logits[:, 0], dim=-1)
    g_int = torch.randn(B, K, D, generator=g)
    g_probs = torch.randn(B, n, K, generator=g)
    leaves = [x.to(device).requires_grad_(), protos.to(device).requires_grad_()]
    for name in ("active_scale", "weights"):
        if name in kw:
            kw[name] = kw[name].to(device).requires_grad_()
            leaves.append(kw[name])
    return leaves[0], mask.to(device), leaves[1], kw, leaves, g_int.to(device), g_probs.to(device)


def run_provider(args) -> dict:
    import torch

    from seqrec.ops import intent_cluster
    from seqrec.ops.reference import intent_cluster as reference

    device = args.device
    impl = {"seqrec": intent_cluster, "reference": reference}.get(args.provider)
    if impl is None:
        impl = torch.compile(reference, dynamic=False)
    # One-time costs (thread pools, lazy library loads) are paid on a tiny batch before
    # the memory baseline, so that the peak counts the op's own memory only.
    small = argparse.Namespace(**{**vars(args), "batch": 2})
    xs, ms, ps, kws, _, gis, gps = make_inputs(small, args.case, device)
    torch.autograd.backward(impl(xs, ms, ps, args.tau, **kws), (gis, gps))
    del xs, ms, ps, kws, gis, gps

    x, mask, protos, kw, leaves, g_int, g_probs = make_inputs(args, args.case, device)
    fn = lambda: impl(x, mask, protos, args.tau, **kw)  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = {}

    def forward():
        result["out"] = fn()
        sync()

    def step(fingerprint=False):
        intents, probs = fn()
        torch.autograd.backward((intents, probs), (g_int, g_probs))
        sync()
        if fingerprint:  # outside the measured steps: these reductions allocate
            result["fingerprint"] = [float(intents.double().sum()), float(probs.double().sum())] + [
                float(t.grad.double().square().sum()) for t in leaves]
        for t in leaves:
            t.grad = None

    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = rss_bytes()
    med, times = median_seconds(step, repeats=args.repeats, warmup=1)
    peak = (torch.cuda.max_memory_allocated() - base if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss)
    fwd_med, _ = median_seconds(forward, repeats=args.repeats, warmup=1)
    result.pop("out")
    step(fingerprint=True)

    saved = saved_bytes(fn)
    return {"provider": args.provider, "case": args.case, "median_s": med, "fwd_s": fwd_med,
            "times": times, "peak_bytes": peak, "saved_bytes": saved,
            "fingerprint": result["fingerprint"], "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="sine,dss")
    parser.add_argument("--providers", default="seqrec,reference")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--provider", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)

    providers = args.providers.split(",")
    if args.device == "cuda":
        import torch

        import seqrec  # noqa: F401
        if not torch.cuda.is_available():
            print("skipped: --device cuda but no CUDA device is available")
            return 0
        if not torch._C._dispatch_has_kernel_for_dispatch_key("seqrec::intent_cluster", "CUDA"):
            print("note: seqrec was built without a CUDA intent_cluster kernel; running the reference only")
            providers = [p for p in providers if p != "seqrec"]
    if args.provider:
        print(json.dumps(run_provider(args)))
        return 0

    rows, ok = [], True
    first = None
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {sorted(CASES)}")
        results = []
        for provider in providers:
            child = ["--provider", provider, "--case", case] + (argv if argv is not None else sys.argv[1:])
            results.append(run_child(__file__, child))
        first = first or results[0]
        base = next((r for r in results if r["provider"] == "reference"), results[0])
        for r in results:
            same = all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(r["fingerprint"], base["fingerprint"]))
            ok &= same
            cfg = CASES[case]
            rows.append([case, f"L{cfg['L']} K{cfg['K']}", r["provider"], r["fwd_s"] * 1e3, r["median_s"] * 1e3,
                         base["median_s"] / r["median_s"], r["peak_bytes"] / 2**20,
                         r["peak_bytes"] / max(base["peak_bytes"], 1), r["saved_bytes"] / 2**20,
                         "yes" if same else "NO"])
    print(f"intent_cluster forward+backward, B {args.batch}, n {args.n}, D {args.dim}, tau {args.tau}, "
          f"device {args.device}, {first['threads']} threads, {first['cpu']}, torch {first['torch']}")
    print_table(f"median of {args.repeats} steps after 1 warm-up; peak = high-water RSS above the inputs "
                "(CPU) / max_memory_allocated (CUDA); saved = autograd's saved tensors",
                ["case", "shape", "provider", "fwd ms", "fwd+bwd ms", "speed-up", "peak MiB", "peak/ref",
                 "saved MiB", "same result"], rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
