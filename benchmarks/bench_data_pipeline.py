"""Data pipeline: one training epoch of batches through each torch.utils.data face.

Providers (Amazon Beauty, leave-one-out, batch 256, one negative per position):
``split.train_batches`` (the trainer's loop, the baseline), the map-style
``TrainDataset`` by rows (``collate_fn=ds.collate``) and by whole batches
(``BatchSampler``, ``batch_size=None``), and ``ShardedTrainBatches``, each with 0 and 2
DataLoader workers; then the popularity and in-batch samplers through
``train_batches``. Prints medians and the ratio to the baseline (> 1 = slower).

    python benchmarks/bench_data_pipeline.py [--data ../shared/data/Beauty] [--repeats 3]
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from common import SHARED_DATA, median_seconds, print_table
from seqrec.data import LeaveOneOut, SequenceDataset, ShardedTrainBatches, TrainDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "Beauty"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = SequenceDataset.from_s3rec(f"{args.data}/Beauty.txt", attributes=None)
    split = LeaveOneOut(dataset)
    bs = args.batch_size
    ds = TrainDataset(split, seed=0)
    it = ShardedTrainBatches(split, bs, seed=0)

    def count(loader) -> int:
        return sum(1 for _ in loader)

    def batches(workers: int):
        sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(0)), bs, False)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=workers)

    providers = [("split.train_batches", lambda: count(split.train_batches(bs, seed=0)))]
    for w in (0, 2):
        providers += [
            (f"TrainDataset rows, {w} workers",
             lambda w=w: count(DataLoader(ds, batch_size=bs, shuffle=True, num_workers=w, collate_fn=ds.collate))),
            (f"TrainDataset batches, {w} workers", lambda w=w: count(batches(w))),
            (f"ShardedTrainBatches, {w} workers", lambda w=w: count(DataLoader(it, batch_size=None, num_workers=w))),
        ]
    providers += [(f"train_batches, {name} negatives", lambda name=name: count(split.train_batches(bs, seed=0,
                                                                                                   negatives=name)))
                  for name in ("popularity", "in-batch")]
    rows, base = [], None
    for name, fn in providers:
        seconds, _ = median_seconds(fn, repeats=args.repeats)
        base = base or seconds
        rows.append([name, seconds, seconds / base])
    print_table(f"one epoch ({len(split.train_users)} users, batch {bs}), {dataset.name}",
                ["provider", "seconds", "x baseline"], rows)


if __name__ == "__main__":
    main()
