"""DDP on the CPU: 2 processes x 1 thread (torchrun, gloo) vs 1 process x 1 thread, SASRec
with softmax CE on Beauty, the same global batch.

Prints the median training-epoch seconds of each, the throughput ratio (1-process epoch
time / 2-process epoch time; target >= 1.6), and the machine's load average before and
after (the ratio means little on a machine whose other work takes the cores). With
``--metrics``, also the test metrics (full ranking, best validation epoch) of the
2-process run against the 1-process run of the same settings, and of a 1-process run
with another seed (the seed spread the difference is to be read against).

    python benchmarks/bench_ddp.py [--epochs 2] [--metrics --epochs 20]

Skips (exit 0, with a message) when ../shared/data/Beauty is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import SHARED_DATA, print_table

BEAUTY = SHARED_DATA / "Beauty"


def child(args) -> None:
    """One run (under torchrun: one rank); rank 0 prints a JSON line."""
    import torch

    from seqrec.data import load_dataset
    from seqrec.models import build_model
    from seqrec.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    dataset = load_dataset(str(BEAUTY))
    split = dataset.leave_one_out(max_len=50)
    torch.manual_seed(args.seed)
    model = build_model("sasrec", num_items=dataset.num_items, max_len=50, hidden_size=64, num_layers=2,
                        num_heads=2, hidden_dropout=0.5, attention_dropout=0.5, loss="ce")
    # Validation only after the last epoch unless metrics are asked for: the epochs timed
    # are training alone.
    config = TrainConfig(epochs=args.epochs, batch_size=256, lr=1e-3, seed=args.seed, patience=0,
                         eval_every=1 if args.metrics else args.epochs, progress=False)
    trainer = Trainer(model, split, config)
    start = time.perf_counter()
    result = trainer.fit()
    total = time.perf_counter() - start
    rank = trainer.ddp.rank if trainer.ddp is not None else 0
    if rank == 0:
        print(json.dumps({"epochs": [r["train_seconds"] for r in result.history], "total": total,
                          "world": 1 if trainer.ddp is None else trainer.ddp.world_size,
                          "best_epoch": result.best_epoch, "test": result.test_full,
                          "losses": [r["loss"] for r in result.history]}))


def launch(args, world: int, seed: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    script = [os.path.abspath(__file__), "--child", "--epochs", str(args.epochs), "--seed", str(seed)]
    script += ["--metrics"] if args.metrics else []
    if world == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-5000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(proc.returncode)
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (median epoch time reported)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--metrics", action="store_true",
                        help="validate every epoch and compare the test metrics (use more --epochs)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not BEAUTY.exists():
        print(f"skipped: {BEAUTY} is absent (set SEQREC_SHARED_DATA to the folder holding Beauty/)")
        return
    load_before = os.getloadavg()
    cores = os.cpu_count()
    one = launch(args, 1, args.seed)
    two = launch(args, 2, args.seed)
    load_after = os.getloadavg()
    t1, t2 = statistics.median(one["epochs"]), statistics.median(two["epochs"])
    print(f"machine: {cores} cores; load average (1, 5, 15 min) before {load_before[0]:.1f} {load_before[1]:.1f} "
          f"{load_before[2]:.1f}, after {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}")
    print_table(f"SASRec CE on Beauty, global batch 256, {args.epochs} epochs, 1 thread per process",
                ["processes", "epoch s (median)", "epochs s", "first loss"],
                [[1, t1, " ".join(f"{t:.1f}" for t in one["epochs"]), one["losses"][0]],
                 [2, t2, " ".join(f"{t:.1f}" for t in two["epochs"]), two["losses"][0]]])
    print(f"throughput ratio, 2 processes / 1 process: {t1 / t2:.2f}x (target >= 1.6x)")
    if args.metrics:
        other = launch(args, 1, args.seed + 1)
        keys = [k for k in one["test"] if k.startswith(("HR@", "NDCG@")) or k == "MRR"]
        rows = [[f"1 process, seed {args.seed}", one["best_epoch"], *(one["test"][k] for k in keys)],
                [f"2 processes, seed {args.seed}", two["best_epoch"], *(two["test"][k] for k in keys)],
                [f"1 process, seed {args.seed + 1}", other["best_epoch"], *(other["test"][k] for k in keys)]]
        print_table("test, full ranking (best validation epoch)", ["run", "best epoch", *keys], rows)
        key = "NDCG@10" if "NDCG@10" in keys else keys[0]
        print(f"{key}: 2 processes - 1 process = {two['test'][key] - one['test'][key]:+.4f}; "
              f"seed spread (seed {args.seed + 1} - seed {args.seed}) = {other['test'][key] - one['test'][key]:+.4f}")


if __name__ == "__main__":
    main()
