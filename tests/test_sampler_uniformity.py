"""The negative samplers draw uniformly from the items a user never interacted with:
chi-square of the counts over many draws (fixed seeds), for the training negatives and
the sampled-protocol candidates."""
from __future__ import annotations

import math

import numpy as np

from seqrec.data import synthetic


def _chi_square_ok(counts: np.ndarray) -> tuple[bool, float, float]:
    """Pearson's statistic against equal expected counts, and a bound 5 standard
    deviations above its mean (df = cells - 1, variance 2 df): fails a uniform sampler
    about once in 10^6 runs, catches a bias of a few percent at these counts."""
    expected = counts.sum() / counts.size
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = counts.size - 1
    bound = df + 5 * math.sqrt(2 * df)
    return stat < bound, stat, bound


def test_training_negatives_are_uniform_over_unseen_items():
    ds = synthetic(num_users=40, num_items=60, num_intents=3, seed=2)
    split = ds.leave_one_out(max_len=20)
    seen = {u: set(ds.items[ds.indptr[u]:ds.indptr[u + 1]].tolist()) for u in range(ds.num_users)}
    counts = np.zeros((ds.num_users, ds.num_items + 1), np.int64)
    for epoch in range(150):
        for batch in split.train_batches(64, seed=5, epoch=epoch):
            users = batch.users.numpy()
            neg = batch.negative_ids.numpy()
            for row, u in enumerate(users):
                drawn = neg[row][batch.target_ids[row].numpy() > 0]
                np.add.at(counts[u], drawn, 1)
    assert counts[:, 0].sum() == 0
    pooled = np.zeros(ds.num_items + 1, np.int64)
    for u in range(ds.num_users):
        unseen = np.array(sorted(set(range(1, ds.num_items + 1)) - seen[u]))
        assert all(counts[u, i] == 0 for i in seen[u]), f"user {u} got one of its own items as a negative"
        if counts[u].sum() > 20 * len(unseen):  # users with enough draws: per-user test
            ok, stat, bound = _chi_square_ok(counts[u, unseen])
            assert ok, (u, stat, bound)
        pooled += counts[u]
    assert pooled[1:].min() > 0  # every item is someone's negative


def test_sampled_candidates_are_uniform_over_unseen_items():
    ds = synthetic(num_users=30, num_items=50, num_intents=3, seed=4)
    split = ds.leave_one_out(max_len=20)
    users = split.eval_users
    counts = np.zeros((len(users), ds.num_items + 1), np.int64)
    for seed in range(300):
        cand = split.sampled_candidates("test", num_negatives=5, seed=seed)[:, 1:]
        for row in range(len(users)):
            counts[row, cand[row]] += 1  # distinct within a row
    for row, u in enumerate(users):
        seen = set(ds.items[ds.indptr[u]:ds.indptr[u + 1]].tolist())
        unseen = np.array(sorted(set(range(1, ds.num_items + 1)) - seen))
        assert counts[row, sorted(seen)].sum() == 0
        ok, stat, bound = _chi_square_ok(counts[row, unseen])
        assert ok, (u, stat, bound)
