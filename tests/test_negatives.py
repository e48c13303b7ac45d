"""Negative samplers: distributions (chi-square at a fixed seed), log-Q values, the
padding id, in-batch exclusions and determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.data import (InBatchNegatives, LeaveOneOut, LeaveOneOutSplit, PopularityNegatives, UniformNegatives,
                         synthetic)
from seqrec.data.negatives import counter_uniform, train_item_counts


def chi2_critical(dof: int, z: float = 3.09) -> float:
    """Upper 0.1% point of chi-square(dof), Wilson-Hilferty approximation."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi2(observed: np.ndarray, expected: np.ndarray) -> float:
    keep = expected > 0
    assert observed[~keep].sum() == 0  # nothing drawn where the probability is 0
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_counter_uniform_is_uniform_and_keyed():
    u = counter_uniform(1, 2, np.arange(200_000))
    assert 0 <= u.min() and u.max() < 1
    hist = np.bincount((u * 20).astype(int), minlength=20)
    assert chi2(hist, np.full(20, len(u) / 20)) < chi2_critical(19)
    assert np.array_equal(u[:5], counter_uniform(1, 2, np.arange(5)))  # value depends on its key only
    assert not np.array_equal(u[:5], counter_uniform(1, 3, np.arange(5)))


def test_popularity_frequencies_match_distribution():
    counts = np.array([50, 40, 20, 10, 5, 0, 3, 1, 1, 30, 7], np.int64)  # index 0 (padding) must be ignored
    sampler = PopularityNegatives(counts)
    assert sampler.q[0] == 0 and sampler.q[5] == 0 and math.isclose(sampler.q.sum(), 1.0)
    assert np.allclose(sampler.q[1:], counts[1:] / counts[1:].sum())
    users = np.arange(400)
    targets = np.ones((400, 30), np.int64)
    neg = sampler.sample(users, targets, 10, seed=0, epoch=0)
    drawn = np.bincount(neg.ravel(), minlength=len(counts))
    assert drawn[0] == 0 and drawn[5] == 0  # never the padding id, never a zero-count item
    assert chi2(drawn, sampler.q * neg.size) < chi2_critical(int((sampler.q > 0).sum()) - 1)
    # log-Q of the sampled items is log of their probability; 0 at padding
    lq = sampler.log_q(torch.from_numpy(neg))
    assert torch.allclose(lq, torch.from_numpy(np.log(sampler.q[neg])))
    assert sampler.log_q(torch.tensor([0, 1])).tolist() == [0.0, pytest.approx(math.log(sampler.q[1]))]
    # alpha smooths the distribution
    flat = PopularityNegatives(counts, alpha=0.5)
    assert np.allclose(flat.q[1:], np.sqrt(counts[1:]) / np.sqrt(counts[1:]).sum())


def test_popularity_draws_are_per_user_and_position():
    sampler = PopularityNegatives(np.arange(21))
    targets = np.array([[0, 0, 3, 4], [5, 6, 7, 8], [0, 1, 2, 3]])
    full = sampler.sample(np.array([10, 11, 12]), targets, 2, seed=3, epoch=1)
    assert (full[targets == 0] == 0).all()
    # a row's negatives do not depend on the other rows of its batch
    alone = sampler.sample(np.array([12]), targets[2:], 2, seed=3, epoch=1)
    assert np.array_equal(alone[0], full[2])
    assert not np.array_equal(sampler.sample(np.array([12]), targets[2:], 2, seed=3, epoch=2)[0], full[2])


def test_popularity_counts_come_from_training_part_only():
    ds = synthetic(num_users=50, num_items=40, seed=0)
    loo = LeaveOneOutSplit(ds, max_len=5)
    counts = train_item_counts(loo)
    users = loo.eval_users
    held_out = np.concatenate([ds.items[ds.indptr[users + 1] - 1], ds.items[ds.indptr[users + 1] - 2]])
    assert np.array_equal(counts + np.bincount(held_out, minlength=ds.num_items + 1), ds.item_popularity())
    assert np.array_equal(train_item_counts(LeaveOneOut(ds, max_len=5)), counts)


def test_in_batch_never_own_target_nor_own_row():
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 6, size=(16, 12))  # few items: many collisions to avoid
    targets[:, :3] = 0  # padding
    neg = InBatchNegatives().sample(np.arange(16), targets, 4, seed=0, epoch=0)
    real = targets != 0
    assert (neg[~real] == 0).all() and (neg[real] > 0).all()
    assert (neg != targets[..., None])[real].all()  # never the position's own target
    for row in range(16):  # drawn from the other rows' targets
        others = set(targets[np.arange(16) != row][real[np.arange(16) != row]].tolist())
        assert set(neg[row][real[row]].ravel().tolist()) <= others


def test_in_batch_frequencies_and_log_q():
    # position (0, 1) has target 1; the other rows hold targets 2 (x3), 3 (x1), 1 (x2)
    targets = np.array([[0, 1], [2, 2], [2, 3], [1, 1]])
    neg = InBatchNegatives().sample(np.arange(4), targets, 3000, seed=5, epoch=0)[0, 1]
    drawn = np.bincount(neg, minlength=4)
    expected = np.array([0, 0, 3, 1]) / 4 * len(neg)  # item 1 excluded: uniform over the 4 other positions
    assert chi2(drawn, expected) < chi2_critical(1)
    lq = InBatchNegatives().log_q(torch.tensor([0, 1, 2, 3]), target_ids=torch.from_numpy(targets))
    assert lq[0] == 0 and torch.allclose(lq[1:], torch.log(torch.tensor([3 / 7, 3 / 7, 1 / 7], dtype=lq.dtype)))
    with pytest.raises(ValueError, match="use a larger batch"):
        InBatchNegatives().sample(np.arange(2), np.array([[4, 4], [4, 4]]), 1, seed=0, epoch=0)


def test_uniform_log_q_counts_unseen_items():
    ds = synthetic(num_users=10, num_items=30, seed=0)
    sampler = UniformNegatives(ds)
    users = torch.tensor([0, 3])
    items = torch.tensor([[0, 5, 6], [7, 8, 0]])
    lq = sampler.log_q(items, users=users)
    for r, u in enumerate(users.tolist()):
        unseen = ds.num_items - len(np.unique(ds.sequence(u)))
        assert lq[r, 1] == pytest.approx(-math.log(unseen))
    assert lq[0, 0] == 0 and lq[1, 2] == 0
    with pytest.raises(ValueError, match="needs the batch's users"):
        sampler.log_q(items)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="at least one item with a positive count"):
        PopularityNegatives(np.zeros(5))
    with pytest.raises(ValueError, match="alpha must be"):
        PopularityNegatives(np.ones(5), alpha=-1)
    split = LeaveOneOutSplit(synthetic(num_users=10, num_items=30, seed=0), max_len=4)
    from seqrec.data.splits import build_train_batch

    with pytest.raises(ValueError, match="unknown sampler 'hard'; choose from uniform, popularity, in-batch"):
        build_train_batch(split, split.train_users[:2], seed=0, epoch=0, negatives="hard")
