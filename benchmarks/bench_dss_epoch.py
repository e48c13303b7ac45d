"""DSS training on Beauty: seqrec (backend="seqrec") vs the same model on plain PyTorch
(backend="reference"), one epoch or a fixed number of batches.

Both providers are ``seqrec.models.DSS`` with the same config (hidden 64, 2 single-head
layers, K 4, dropout 0.5, loss "ce" over all 12,101 items, seq2seq weight 0.1, batch 256,
max_len 50), the same initial weights, the same batches (the C++ data engine) and the
same optimizer (fused Adam, lr 1e-3). They differ only in the backend switch:

* seqrec: ``intent_cluster`` is the compiled op, and the all-item mixture softmax of
  the seq2item term streams over blocks of items (``seqrec.models.losses.mixture_nll``:
  log-sum-exps in the forward, logits recomputed block by block in the backward);
* reference: ``intent_cluster`` is its plain-PyTorch reference and the mixture softmax
  materialises the [N, K, V] logits and lets autograd differentiate them.
Attention runs through ``dif_attention`` under "seqrec" and its plain-PyTorch
reference under "reference"; their dropout masks are drawn differently, so the math is
checked on the initial weights with dropout off, and the losses after training differ
a little.

Each (provider, repeat) runs in a fresh subprocess: build, one warm-up batch (not
timed, not counted), then ``--batches`` training steps (0 = the whole epoch). Reported:
median seconds per batch over ``--repeats`` subprocesses per provider (providers
alternate, so both see the same machine load), the epoch time this implies, the
speed-up, the peak resident memory above the state after warm-up (ru_maxrss minus RSS,
per process), the loss of the initial weights with dropout off (both providers must
agree) and the loss after the timed batches.

    python benchmarks/bench_dss_epoch.py [--batches 10] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from common import SHARED_DATA, print_table, rss_bytes, run_child

PROVIDERS = ("seqrec", "reference")


def run_provider(args) -> dict:
    import torch

    from seqrec.data import load_dataset
    from seqrec.models import DSS, DSSConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    split = ds.leave_one_out(max_len=50)
    total = split.num_train_batches(args.batch_size)
    count = total - 1 if args.batches <= 0 else min(args.batches, total - 1)
    torch.manual_seed(0)
    model = DSS(DSSConfig(num_items=ds.num_items, num_intentions=args.intentions), backend=args.provider)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    batches = split.train_batches(args.batch_size, seed=0, epoch=0)

    def step(batch):
        loss = model.loss(batch.input_ids, batch.target_ids, batch.negative_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    first_batch = next(batches)
    # Sanity check of the math: the loss of the initial weights with dropout off (the
    # providers draw dropout differently: the attention op hashes its masks, the
    # reference uses F.dropout) and the same split points.
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        initial_loss = model.loss(first_batch.input_ids, first_batch.target_ids, first_batch.negative_ids).item()
    model.train()
    torch.manual_seed(1)  # split points and dropout
    step(first_batch)  # warm-up: thread pools, allocator, Adam state
    base = rss_bytes()
    start = time.perf_counter()
    losses = [step(next(batches)).item() for _ in range(count)]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"provider": args.provider, "seconds": seconds, "batches": count, "epoch_batches": total,
            "peak_bytes": peak, "initial_loss": initial_loss, "last_loss": losses[-1],
            "threads": torch.get_num_threads(),
            "items": ds.num_items, "users": len(split.train_users)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "Beauty"))
    parser.add_argument("--batches", type=int, default=10,
                        help="timed batches per run; 0 = the whole epoch (minus the warm-up batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--intentions", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--provider", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.device == "cuda":
        print("skipped: bench_dss_epoch measures the CPU path (no CUDA kernels in this build)")
        return 0
    if not os.path.exists(args.data):
        print(f"skipped: no dataset at {args.data} (set SEQREC_SHARED_DATA)")
        return 0
    if args.provider:
        print(json.dumps(run_provider(args)))
        return 0

    results = {p: [] for p in PROVIDERS}
    for _ in range(args.repeats):
        for provider in PROVIDERS:  # alternate: both providers see the same machine load
            child = ["--provider", provider] + (argv if argv is not None else sys.argv[1:])
            results[provider].append(run_child(__file__, child))
    first = results["seqrec"][0]
    per_batch = {p: statistics.median(r["seconds"] / r["batches"] for r in rs) for p, rs in results.items()}
    peak = {p: max(r["peak_bytes"] for r in rs) for p, rs in results.items()}
    rows = []
    for p in PROVIDERS:
        rows.append([p, per_batch[p], per_batch[p] * first["epoch_batches"], per_batch["reference"] / per_batch[p],
                     peak[p] / 2**20, f"{results[p][0]['initial_loss']:.6f}", f"{results[p][0]['last_loss']:.5f}"])
    span = "the whole epoch" if args.batches <= 0 else f"{first['batches']} batches"
    print(f"DSS training on {os.path.basename(args.data.rstrip('/'))}: {first['users']} training users, "
          f"{first['items']} items, batch {args.batch_size}, K {args.intentions}, "
          f"{first['epoch_batches']} batches per epoch; timed {span} after 1 warm-up batch, "
          f"median of {args.repeats} fresh processes per provider, {first['threads']} torch threads")
    print_table("", ["provider", "s/batch", "epoch s (est.)", "speed-up", "peak MiB", "loss, dropout off",
                     "loss after"], rows)
    same = abs(results["seqrec"][0]["initial_loss"] - results["reference"][0]["initial_loss"]) < 1e-4
    print(f"same loss with dropout off: {'yes' if same else 'NO'} (the losses after training differ a little: "
          f"different dropout draws); per-run seconds: "
          + "; ".join(f"{p} " + ", ".join(f"{r['seconds']:.1f}" for r in rs) for p, rs in results.items()))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
