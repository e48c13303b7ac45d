"""DIF-SR at the paper's size on Beauty: seqrec vs the same model written the plain
PyTorch way, training batches and full-ranking validation.

Both providers are ``seqrec.models.DIFSR`` with the ``difsr-beauty`` preset (hidden 256,
4 layers, 8 heads, attribute size 64, gate fusion, attribute predictors with lambda 10,
CE over all 12,101 items, batch 256, max_len 50) on Beauty's ``attributes`` field, with
the same initial weights, the same batches (the C++ data engine) and the same optimizer
(fused Adam, lr 1e-4). The reference provider swaps, in its own process, what seqrec
does differently for what a direct port (RecBole's DIF-SR) does:

* seqrec: rows encoded in length groups cropped to 8/16/32/50 columns, projections and
  feed-forward on real positions only, the last block on the positions the loss or the
  score reads, ``dif_attention``'s compiled kernel, ``softmax_nll`` for the CE, one
  item-table lookup per step;
* reference: every batch padded to max_len and every position computed
  (``DIFSR._encode_padded``), the plain-PyTorch reference of ``dif_attention`` (it
  materialises the [B, H, n, S, n] score stack), ``F.cross_entropy`` over the logits,
  one item-table lookup per use.

Each (provider, repeat) runs in a fresh subprocess: build, one warm-up batch (not timed),
``--batches`` training steps, then ``score`` for the first ``--eval-users`` validation
users in chunks of 2,048 (eval mode). Reported: medians over ``--repeats`` processes per
provider (providers alternate, so both see the same machine load), the epoch and
full-validation times they imply, speed-ups, the peak resident memory above the state
after warm-up, and the loss of the initial weights with dropout off (the providers must
agree: same math).

    python benchmarks/bench_difsr_epoch.py [--batches 8] [--eval-users 4096] [--repeats 3] [--threads N]
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


def use_plain_pytorch(model) -> None:
    """Turn this process's DIF-SR into the direct port described in the module docstring."""
    import torch.nn.functional as F

    import seqrec.models.difsr as difsr

    model._takes_padded_path = lambda: True  # one batch padded to max_len, every position
    difsr.softmax_nll = lambda hidden, weight, target: F.cross_entropy(hidden @ weight.t(), target,
                                                                        reduction="none")


def run_provider(args) -> dict:
    import torch

    from seqrec.data import load_dataset
    from seqrec.models.difsr import DIFSR, DIFSRConfig, PRESETS, attribute_config

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    split = ds.leave_one_out(max_len=50)
    total = split.num_train_batches(args.batch_size)
    count = min(args.batches, total - 1)
    torch.manual_seed(0)
    config = DIFSRConfig(num_items=ds.num_items, **PRESETS["difsr-beauty"].model,
                         **attribute_config(ds, ("attributes",)))
    model = DIFSR(config, backend=args.provider, attributes=ds)
    if args.provider == "reference":
        use_plain_pytorch(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    batches = split.train_batches(args.batch_size, seed=0, epoch=0)

    def step(batch):
        loss = model.loss(batch.input_ids, batch.target_ids, batch.negative_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    first_batch = next(batches)
    model.eval()
    with torch.no_grad():
        initial_loss = model.loss(first_batch.input_ids, first_batch.target_ids).item()
    model.train()
    step(first_batch)  # warm-up: thread pools, allocator, Adam state
    base = rss_bytes()
    start = time.perf_counter()
    losses = [step(next(batches)).item() for _ in range(count)]
    train_seconds = time.perf_counter() - start

    valid = split.eval_batch("valid")
    users = min(args.eval_users, len(valid.input_ids))
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, users, 2048):
            hi = min(lo + 2048, users)
            model.score(valid.input_ids[lo:hi], valid.lengths[lo:hi])
    eval_seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"provider": args.provider, "train_seconds": train_seconds, "batches": count, "epoch_batches": total,
            "eval_seconds": eval_seconds, "eval_users": users, "valid_users": len(valid.input_ids),
            "peak_bytes": peak, "initial_loss": initial_loss, "last_loss": losses[-1],
            "threads": torch.get_num_threads(), "items": ds.num_items}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "Beauty"))
    parser.add_argument("--batches", type=int, default=8, help="timed training batches per run")
    parser.add_argument("--eval-users", type=int, default=4096, help="validation users scored per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--provider", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.device == "cuda":
        print("skipped: bench_difsr_epoch measures the CPU path (no CUDA kernels in this build)")
        return 0
    if not os.path.exists(os.path.join(args.data, "Beauty_item2attributes.json")):
        print(f"skipped: no Beauty dataset with attributes at {args.data} (set SEQREC_SHARED_DATA)")
        return 0
    if args.batches < 1 or args.eval_users < 1:
        parser.error("--batches and --eval-users must be >= 1")
    if args.provider:
        print(json.dumps(run_provider(args)))
        return 0

    results = {p: [] for p in PROVIDERS}
    for _ in range(args.repeats):
        for provider in PROVIDERS:  # alternate: both providers see the same machine load
            child = ["--provider", provider] + (argv if argv is not None else sys.argv[1:])
            results[provider].append(run_child(__file__, child))
    first = results["seqrec"][0]
    per_batch = {p: statistics.median(r["train_seconds"] / r["batches"] for r in rs) for p, rs in results.items()}
    per_user = {p: statistics.median(r["eval_seconds"] / r["eval_users"] for r in rs) for p, rs in results.items()}
    peak = {p: max(r["peak_bytes"] for r in rs) for p, rs in results.items()}
    rows = []
    for p in PROVIDERS:
        rows.append([p, per_batch[p], per_batch[p] * first["epoch_batches"], per_batch["reference"] / per_batch[p],
                     per_user[p] * first["valid_users"], per_user["reference"] / per_user[p], peak[p] / 2**20,
                     f"{results[p][0]['initial_loss']:.6f}"])
    print(f"DIF-SR (difsr-beauty preset) on {os.path.basename(args.data.rstrip('/'))}: {first['items']} items, "
          f"batch {args.batch_size}, {first['epoch_batches']} batches per epoch, {first['valid_users']} validation "
          f"users; timed {first['batches']} batches after 1 warm-up batch and {first['eval_users']} users' scores, "
          f"median of {args.repeats} fresh processes per provider, {first['threads']} torch threads")
    print_table("", ["provider", "s/batch", "epoch s (est.)", "train speed-up", "validation s (est.)",
                     "validation speed-up", "peak MiB", "loss, dropout off"], rows)
    same = abs(results["seqrec"][0]["initial_loss"] - results["reference"][0]["initial_loss"]) < 1e-4
    print(f"same loss with dropout off: {'yes' if same else 'NO'}; per-run train / eval seconds: "
          + "; ".join(f"{p} " + ", ".join(f"{r['train_seconds']:.1f}/{r['eval_seconds']:.1f}" for r in rs)
                      for p, rs in results.items()))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
