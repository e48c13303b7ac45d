"""Splits: leave-one-out through the generic interface, global temporal, per-user ratio.

A hand-made dataset with known timestamps checks exactly which interactions land in
training, validation and test, and that nothing at or after the cut is trained on.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.data import (DataError, LeaveOneOut, LeaveOneOutSplit, RatioSplit, SequenceDataset, TemporalSplit,
                         synthetic)
from seqrec.eval import Protocol

# user -> [(raw item, time)]; raw items name their user and time so a test can read
# back exactly which interaction landed where.
TOY = {
    "A": [(101, 1), (102, 2), (103, 3), (110, 10), (111, 11)],
    "B": [(202, 2), (205, 5), (212, 12), (213, 13)],
    "C": [(304, 4), (306, 6)],
    "D": [(411, 11), (412, 12), (414, 14)],
    "E": [(501, 1), (509, 9), (510, 10)],  # 510 is exactly at the cut: after it
}


def toy() -> SequenceDataset:
    rows = [(u, i, t) for u, seq in TOY.items() for i, t in seq]
    rng = np.random.default_rng(0)
    rows = [rows[k] for k in rng.permutation(len(rows))]  # file order must not matter
    users, items, times = zip(*rows)
    return SequenceDataset.from_arrays(np.array(users), np.array(items), np.array(times, float), name="toy")


def raw(ds, ids) -> list[int]:
    return [int(t) for t in ds.item_raw(np.asarray(ids)[np.asarray(ids) != 0])]


def train_pairs(split) -> set[tuple[str, int, int]]:
    """(user, input item, target item) of every real training position, raw ids."""
    ds = split.dataset
    pairs = set()
    for batch in split.train_batches(2, seed=3, epoch=0):
        for row in range(len(batch.users)):
            keep = batch.target_ids[row] != 0
            for a, b in zip(raw(ds, batch.input_ids[row][keep]), raw(ds, batch.target_ids[row][keep])):
                pairs.add((ds.user_tokens[int(batch.users[row])], a, b))
    return pairs


def instances(split, stage) -> dict[str, tuple[list[int], int]]:
    """user -> (input items, target), raw ids."""
    ds = split.dataset
    batch = split.eval_batch(stage)
    out = {}
    for row in range(len(batch.users)):
        hist = batch.history_items[batch.history_indptr[row]:batch.history_indptr[row + 1]]
        assert raw(ds, hist) == raw(ds, batch.input_ids[row])  # max_len 50 keeps everything here
        out[ds.user_tokens[int(batch.users[row])]] = (raw(ds, batch.input_ids[row]), int(ds.item_raw([batch.target[row]])[0]))
    return out


def test_dataset_keeps_timestamps_in_item_order():
    ds = toy()
    for u, seq in TOY.items():
        user = int(ds.user_ids([u])[0])
        lo, hi = ds.indptr[user], ds.indptr[user + 1]
        assert raw(ds, ds.items[lo:hi]) == [i for i, _ in seq]
        assert ds.timestamps[lo:hi].tolist() == [float(t) for _, t in seq]
    # k-core keeps each surviving interaction's time
    core = ds.kcore(min_user=3, min_item=1)
    for user in range(core.num_users):
        times = core.timestamps[core.indptr[user]:core.indptr[user + 1]]
        assert times.tolist() == [float(t) for _, t in TOY[core.user_tokens[user]]]
    with pytest.raises(DataError, match="timestamps of user 0 decrease"):
        SequenceDataset(ds.indptr, ds.items, ds.user_tokens, ds.item_tokens, timestamps=ds.timestamps[::-1].copy())


def test_temporal_one_cut_exact_assignment():
    ds = toy()
    split = TemporalSplit(ds, cut=10)
    assert train_pairs(split) == {("A", 101, 102), ("A", 102, 103), ("B", 202, 205), ("C", 304, 306),
                                  ("E", 501, 509)}
    assert instances(split, "valid") == {"A": ([101, 102, 103], 110), "B": ([202, 205], 212)}
    assert instances(split, "test") == {"A": ([101, 102, 103, 110], 111), "B": ([202, 205, 212], 213)}
    # no leakage: every training interaction is before the cut
    mask = split.train_mask()
    assert (ds.timestamps[mask] < 10).all() and (ds.timestamps[~mask] >= 10).all()
    assert split.train_item_counts()[ds.item_ids(["110", "510", "411"])].tolist() == [0, 0, 0]
    assert "temporal (cut t=10)" in split.describe() and "test = the 2nd" in split.describe()


def test_temporal_two_cuts_exact_assignment():
    ds = toy()
    split = TemporalSplit(ds, cut=10, test_cut=12)
    assert train_pairs(split) == train_pairs(TemporalSplit(ds, cut=10))  # training stops at the first cut
    assert instances(split, "valid") == {"A": ([101, 102, 103], 110), "E": ([501, 509], 510)}
    assert instances(split, "test") == {"B": ([202, 205], 212), "D": ([411], 412)}
    for stage in ("valid", "test"):
        batch = split.eval_batch(stage)
        users, prefix = split.instances(stage)
        target_time = ds.timestamps[ds.indptr[users] + prefix]
        assert ((target_time >= 10) & (target_time < 12) if stage == "valid" else target_time >= 12).all()
        assert batch.target.tolist() == ds.items[ds.indptr[users] + prefix].tolist()


def test_temporal_errors_and_quantiles():
    ds = toy()
    with pytest.raises(ValueError, match="test_cut .* must be later than cut"):
        TemporalSplit(ds, cut=10, test_cut=10)
    no_time = SequenceDataset(ds.indptr, ds.items, ds.user_tokens, ds.item_tokens, name="toy")
    with pytest.raises(DataError, match="needs timestamps"):
        TemporalSplit(no_time, cut=10)
    # explicit timestamps work for a dataset without them
    assert instances(TemporalSplit(no_time, cut=10, timestamps=ds.timestamps), "test") == \
        instances(TemporalSplit(ds, cut=10), "test")
    with pytest.raises(DataError, match="no valid instance"):
        TemporalSplit(ds, cut=100)
    with pytest.raises(DataError, match="no valid instance"):  # nobody has an interaction in [10, 10.5)
        TemporalSplit(ds.kcore(min_user=0, min_item=0), cut=10.2, test_cut=10.5)
    with pytest.raises(ValueError, match="cut must be a finite time, got nan"):
        TemporalSplit(ds, cut=float("nan"))
    q = TemporalSplit.at_quantiles(ds, 0.5)
    assert q.cut == float(np.quantile(ds.timestamps, 0.5))


def test_ratio_split_exact_assignment():
    ds = SequenceDataset.from_arrays(np.repeat(np.arange(4), [10, 20, 3, 2]), np.arange(35) + 1, name="r")
    split = RatioSplit(ds, (0.8, 0.1, 0.1))
    assert split.train_prefix(np.arange(4)).tolist() == [8, 16, 1, 0]
    assert split.train_users.tolist() == [0, 1]  # user 2 has one training item: no pair
    users, prefix = split.instances("valid")
    assert users.tolist() == [0, 1, 1, 2] and prefix.tolist() == [8, 16, 17, 1]
    users, prefix = split.instances("test")
    assert users.tolist() == [0, 1, 1, 2] and prefix.tolist() == [9, 18, 19, 2]
    batch = split.eval_batch("test", users=[1])
    assert batch.target.tolist() == [ds.items[10 + 18], ds.items[10 + 19]]
    assert (batch.history_indptr[1:] - batch.history_indptr[:-1]).tolist() == [18, 19]
    mask = split.train_mask()
    assert mask.sum() == 8 + 16 + 1
    with pytest.raises(ValueError, match="three positive"):
        RatioSplit(ds, (0.8, 0.2, 0.0))
    with pytest.raises(ValueError, match="three positive"):
        RatioSplit(ds, (0.8, 0.1, float("nan")))
    with pytest.raises(DataError, match="user 3 has no test instance"):
        split.eval_batch("test", users=[3])
    # a user's several instances get different negatives
    cand = split.sampled_candidates("test", 5, seed=0)
    assert cand.shape == (4, 6) and cand[1, 1:].tolist() != cand[2, 1:].tolist()
    assert "ratio 0.8/0.1/0.1" in split.describe()


def test_generic_leave_one_out_equals_leave_one_out_split():
    assert LeaveOneOutSplit is LeaveOneOut  # one implementation, two public names
    ds = synthetic(num_users=60, num_items=80, seed=1)
    old, new = LeaveOneOutSplit(ds, max_len=7), LeaveOneOut(ds, max_len=7)
    assert np.array_equal(old.train_users, new.train_users) and np.array_equal(old.eval_users, new.eval_users)
    for a, b in zip(old.train_batches(16, seed=5, epoch=2, num_negatives=2),
                    new.train_batches(16, seed=5, epoch=2, num_negatives=2), strict=True):
        for x, y in zip(a[:-1], b[:-1]):  # tensor fields (features: empty in both)
            assert torch.equal(x, y)
        assert a.features == b.features == {}
    for stage in ("valid", "test"):
        for x, y in zip(old.eval_batch(stage), new.eval_batch(stage)):
            assert torch.equal(x, y)
        assert np.array_equal(old.sampled_candidates(stage, 9, 4), new.sampled_candidates(stage, 9, 4))
    assert old.sampled_shortfall(10) == new.sampled_shortfall(10) is None
    assert new.info.name == old.info.name == "leave-one-out"


def test_popularity_sampled_candidates_and_protocol_card():
    ds = synthetic(num_users=80, num_items=60, seed=2)
    split = LeaveOneOut(ds, max_len=10, eval_negatives="popularity")
    cand = split.sampled_candidates("test", 20, seed=1)
    assert np.array_equal(cand, LeaveOneOut(ds, max_len=10, eval_negatives="popularity")
                          .sampled_candidates("test", 20, seed=1))  # deterministic
    counts = split.train_item_counts()
    users = split.instances("test")[0]
    for row, user in enumerate(users):
        neg = cand[row, 1:]
        assert len(set(neg.tolist())) == 20  # distinct
        assert not np.isin(neg, ds.sequence(int(user))).any()  # unseen
        assert (counts[neg] > 0).all()  # only trained-on items
    # one negative per user: drawn with probability q(i) / q(the user's unseen items)
    big = synthetic(num_users=3000, num_items=60, seed=3)
    one = LeaveOneOut(big, max_len=10, eval_negatives="popularity")
    drawn = np.bincount(one.sampled_candidates("test", 1, seed=0)[:, 1], minlength=big.num_items + 1)
    q = one.train_item_counts() / one.train_item_counts().sum()
    expected = np.zeros(big.num_items + 1)
    for user in one.instances("test")[0]:
        allowed = q.copy()
        allowed[big.sequence(int(user))] = 0
        expected += allowed / allowed.sum()
    keep = expected > 0
    assert drawn[~keep].sum() == 0
    stat = ((drawn[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    assert stat < dof * (1 - 2 / (9 * dof) + 3.09 * np.sqrt(2 / (9 * dof))) ** 3  # chi-square, p = 0.001
    card = Protocol(split=split.info.name, ranking="sampled", num_negatives=20, seed=1,
                    negatives=split.eval_negatives).describe()
    assert "20 popularity-sampled negatives" in card
    assert "20 negatives" in Protocol(ranking="sampled", num_negatives=20, seed=1).describe()  # unchanged
    assert "popularity-proportional" in split.describe()
    assert "more than" not in (split.sampled_shortfall(20) or "")
    short = split.sampled_shortfall(ds.num_items)
    assert short is not None and "unseen items with a training count" in short
    with pytest.raises(DataError, match="unseen items with a training count"):
        split.sampled_candidates("valid", ds.num_items, seed=0)


@pytest.mark.parametrize("make", [
    lambda ds: LeaveOneOutSplit(ds, max_len=8),
    lambda ds: LeaveOneOut(ds, max_len=8, eval_negatives="popularity"),
    lambda ds: TemporalSplit.at_quantiles(ds, 0.7, max_len=8),
    lambda ds: TemporalSplit.at_quantiles(ds, 0.6, 0.8, max_len=8),
    lambda ds: RatioSplit(ds, (0.7, 0.15, 0.15), max_len=8),
], ids=["loo", "loo-popularity", "temporal", "temporal-two-cuts", "ratio"])
def test_trainer_runs_one_epoch_on_each_split(make):
    from seqrec.models import SASRec, SASRecConfig
    from seqrec.train import TrainConfig, Trainer

    base = synthetic(num_users=60, num_items=50, seed=3)
    # synthetic data has no times: give each interaction a global clock tick
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 100, base.num_interactions))
    times = np.concatenate([np.sort(rng.choice(times, n, replace=False)) for n in base.lengths])
    ds = SequenceDataset(base.indptr, base.items, base.user_tokens, base.item_tokens, name="timed", timestamps=times)
    split = make(ds)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=ds.num_items, max_len=8, hidden_size=8, num_layers=1, loss="ce"))
    trainer = Trainer(model, split, TrainConfig(epochs=1, batch_size=16, patience=0, seed=0, sampled_negatives=10,
                                                progress=False))
    result = trainer.fit()
    assert np.isfinite(result.history[0]["loss"])
    n_test = len(split.eval_batch("test").target)
    assert 0 <= result.test_full["HR@20"] <= 1 and n_test > 0
    assert set(result.test_sampled) >= {"HR@1", "MRR"}
    assert split.info.name in trainer.protocol("full").describe() and split.info.name in result.protocol_full
    popular = getattr(split, "eval_negatives", "uniform") == "popularity"
    assert ("10 popularity-sampled negatives" in result.protocol_sampled) == popular
