"""Million-item catalogues: a SASRec training step at 10^4 vs 10^6 items, and the memory
of exact full-softmax CE at 10^6 items (issue 25, item 4).

1. SASRec step (forward + backward + optimizer step), the same positions at every
   catalogue size (batch 256 x max_len 50, random item ids, hidden 64, 2 blocks), for
   ``loss="bce"`` (one negative per position) and ``loss="sampled"`` (``--negatives``,
   default 20, per position, log-Q corrected), with dense Adam (fused, as the trainer's default) and with
   ``sparse_embeddings`` (sparse table gradients + :class:`RowwiseAdam`). The figure is
   the ratio of the 10^6-item step to the 10^4-item step (target <= 2x).
2. Exact CE at 10^6 items x 256 rows (hidden 64): peak resident memory of the streamed
   CE's forward + backward (blocks of 64 MiB) in a fresh process, beside the size of one
   dense [N, V] matrix of logits (the dense loss holds two of them).

One thread (``torch.set_num_threads(1)``) unless ``--threads``.

    python benchmarks/bench_catalog.py [--items 10000 1000000] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, print_table, rss_bytes, run_child  # noqa: E402


def step_seconds(num_items: int, loss: str, sparse: bool, repeats: int, negatives: int, batch: int = 256,
                 max_len: int = 50) -> float:
    from seqrec.models import build_model
    from seqrec.models.losses import NEGATIVE_LOG_Q
    from seqrec.train import TrainConfig
    from seqrec.train.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model("sasrec", num_items=num_items, max_len=max_len, loss=loss)
    optimizer = build_optimizer(model, TrainConfig(sparse_embeddings=sparse))
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(1, num_items + 1, (batch, max_len), generator=gen)
    targets = torch.randint(1, num_items + 1, (batch, max_len), generator=gen)
    m = 1 if loss == "bce" else negatives
    neg = torch.randint(1, num_items + 1, (batch, max_len, m), generator=gen)
    if m == 1:
        neg = neg.squeeze(-1)
    features = {NEGATIVE_LOG_Q: torch.full(neg.shape, float(torch.log(torch.tensor(m / num_items))))}

    from seqrec.data import TrainBatch

    train_batch = TrainBatch(torch.arange(batch), inputs, targets, neg, torch.full((batch,), max_len),
                             features=features)

    def step():
        loss_value = model.loss_terms(train_batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss_value.backward()
        optimizer.step()

    seconds, _ = median_seconds(step, repeats=repeats, warmup=2)
    return seconds


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def streamed_ce_child(num_items: int, rows: int, hidden_size: int) -> dict:
    from seqrec.models.losses import streamed_softmax_nll

    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(num_items, hidden_size, generator=gen) * 0.1).requires_grad_()
    hidden = torch.randn(rows, hidden_size, generator=gen).requires_grad_()
    target = torch.randint(0, num_items, (rows,), generator=gen)
    before = rss_bytes()
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    streamed_softmax_nll(hidden, weight, target, memory=64 << 20).sum().backward()
    peak = _peak_rss()
    return {"before": before, "peak": peak, "grad_bytes": weight.grad.nbytes + hidden.grad.nbytes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--negatives", type=int, default=20, help="negatives per position of the sampled loss")
    parser.add_argument("--ce-rows", type=int, default=256)
    parser.add_argument("--skip-ce", action="store_true")
    parser.add_argument("--child-ce", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_ce:
        print(json.dumps(streamed_ce_child(*args.child_ce)))
        return 0
    small, large = args.items
    rows = []
    for loss in ("bce", "sampled"):
        for sparse in (False, True):
            t_small = step_seconds(small, loss, sparse, args.repeats, args.negatives)
            t_large = step_seconds(large, loss, sparse, args.repeats, args.negatives)
            rows.append([loss if loss == "bce" else f"sampled ({args.negatives})", "sparse rows" if sparse else "dense Adam", t_small * 1e3, t_large * 1e3,
                         t_large / t_small])
    print_table(f"SASRec step, batch 256 x 50 positions, {args.threads} thread(s)",
                ["loss", "embedding update", f"ms @ {small:.0e} items", f"ms @ {large:.0e} items", "ratio"], rows)
    if not args.skip_ce:
        out = run_child(__file__, ["--threads", str(args.threads), "--child-ce", str(large), str(args.ce_rows), "64"])
        mib = 1 << 20
        dense = args.ce_rows * large * 4
        print_table(f"exact CE, {large:.0e} items x {args.ce_rows} rows x 64, streamed in 64 MiB blocks",
                    ["peak RSS - RSS before (MiB)", "of which gradients (MiB)", "one dense [N, V] (MiB)"],
                    [[(out["peak"] - out["before"]) / mib, out["grad_bytes"] / mib, dense / mib]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
