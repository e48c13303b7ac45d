"""torch.utils.data faces of a split: every training position once per epoch, across
DataLoader workers and DDP ranks, deterministically."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seqrec.data import (LeaveOneOutSplit, RatioSplit, ShardedTrainBatches, TrainBatch, TrainDataset, collate_train,
                         synthetic)

SEED, EPOCH, BATCH = 7, 3, 8


@pytest.fixture(scope="module")
def split():
    # 61 training users: batches of 8 leave a remainder, 2 ranks an odd split
    return LeaveOneOutSplit(synthetic(num_users=61, num_items=70, seed=4, min_length=4), max_len=6)


def positions(batches) -> Counter:
    """Count each real training position, keyed (user, position from the newest)."""
    seen = Counter()
    for b in batches:
        n = b.target_ids.shape[1]
        rows, cols = torch.nonzero(b.target_ids, as_tuple=True)
        seen.update(zip(b.users[rows].tolist(), (n - 1 - cols).tolist()))
    return seen


def by_user(batches) -> dict[int, tuple]:
    out = {}
    for b in batches:
        for r, u in enumerate(b.users.tolist()):
            assert u not in out
            out[u] = tuple(t[r] for t in b[:-1])  # the tensor fields (features: a dict, empty here)
            assert b.features == {}
    return out


def assert_same_rows(a: dict, b: dict):
    assert a.keys() == b.keys()
    for u in a:
        for x, y in zip(a[u], b[u]):
            assert torch.equal(x, y), u


def test_every_position_once_map_style_with_workers(split):
    reference = list(split.train_batches(BATCH, seed=SEED, epoch=EPOCH, num_negatives=2))
    expected = positions(reference)
    assert set(expected.values()) == {1} and len(expected) == sum(int(b.lengths.sum()) for b in reference)
    ds = TrainDataset(split, num_negatives=2, seed=SEED, epoch=EPOCH)
    assert len(ds) == len(split.train_users)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0),
                        num_workers=2, collate_fn=ds.collate)
    got = list(loader)
    assert all(isinstance(b, TrainBatch) for b in got)
    assert positions(got) == expected  # every position exactly once
    # each item's content is a function of (seed, epoch, user): as the split's own batches
    assert_same_rows(by_user(got), by_user(reference))
    # and the same in the main process
    assert_same_rows(by_user(DataLoader(ds, batch_size=5, collate_fn=collate_train)), by_user(reference))


def test_map_style_epoch_changes_negatives(split):
    ds = TrainDataset(split, seed=SEED, epoch=0)
    first = ds[0]
    ds.set_epoch(1)
    second = ds[0]
    assert torch.equal(first.input_ids, second.input_ids) and not torch.equal(first.negative_ids, second.negative_ids)
    assert first.negative_ids.shape == first.target_ids.shape  # one negative: [n]
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        ds.set_epoch(-1)


def test_iterable_with_two_workers_yields_the_epoch_once_in_order(split):
    reference = list(split.train_batches(BATCH, seed=SEED, epoch=EPOCH))
    it = ShardedTrainBatches(split, BATCH, seed=SEED, epoch=EPOCH)
    assert len(it) == len(reference)
    got = list(DataLoader(it, batch_size=None, num_workers=2))
    assert len(got) == len(reference)  # not twice (each worker its own share)
    for a, b in zip(got, reference):
        for x, y in zip(a[:-1], b[:-1]):  # tensor fields; features below
            assert torch.equal(x, y)
    assert set(positions(got).values()) == {1}
    # deterministic across runs
    again = list(DataLoader(it, batch_size=None, num_workers=2))
    assert all(torch.equal(x, y) for a, b in zip(got, again) for x, y in zip(a[:-1], b[:-1]))


def test_ranks_get_disjoint_covering_shares(split):
    reference = list(split.train_batches(BATCH, seed=SEED, epoch=EPOCH))
    shares = []
    for rank in (0, 1):
        it = ShardedTrainBatches(split, BATCH, seed=SEED, epoch=EPOCH, rank=rank, world_size=2)
        batches = list(DataLoader(it, batch_size=None, num_workers=2))
        assert len(batches) == len(it)
        shares.append(batches)
    a, b = positions(shares[0]), positions(shares[1])
    assert not (a.keys() & b.keys())  # disjoint
    assert a + b == positions(reference)  # covering, each once
    # step s of the two ranks together = step s of one process with the same global batch
    for step, ref in enumerate(reference):
        rows = {**by_user([shares[0][step]]), **(by_user([shares[1][step]]) if step < len(shares[1]) else {})}
        assert_same_rows(rows, by_user([ref]))


def test_rank_share_is_a_function_of_seed_epoch_rank_world(split):
    def users(**kw):
        return [b.users.tolist() for b in ShardedTrainBatches(split, BATCH, rank=1, world_size=3, **kw)]

    assert users(seed=1, epoch=2) == users(seed=1, epoch=2)
    assert users(seed=1, epoch=2) != users(seed=1, epoch=3)
    it = ShardedTrainBatches(split, BATCH, seed=1, epoch=2, rank=1, world_size=3, start_batch=5)
    assert [b.users.tolist() for b in it] == users(seed=1, epoch=2)[5:]  # resume mid-epoch
    with pytest.raises(ValueError, match="rank must lie in 0..world_size-1 = 0..1, got 2"):
        ShardedTrainBatches(split, BATCH, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        ShardedTrainBatches(split, 0)


def test_drop_last_and_lengths_per_rank():
    # 9 training users, global batch 4, 3 ranks: steps of 4, 4, 1 users
    split = LeaveOneOutSplit(synthetic(num_users=9, num_items=40, seed=0, min_length=4), max_len=5)
    assert len(split.train_users) == 9
    lens = [len(ShardedTrainBatches(split, 4, rank=r, world_size=3)) for r in range(3)]
    assert lens == [3, 2, 2]
    for r in range(3):
        it = ShardedTrainBatches(split, 4, rank=r, world_size=3)
        assert len(list(it)) == len(it)
    assert [len(ShardedTrainBatches(split, 4, rank=r, world_size=3, drop_last=True)) for r in range(3)] == [2, 2, 2]


@pytest.mark.parametrize("negatives", ["popularity", "in-batch"])
def test_other_negatives_through_both_faces(negatives):
    split = RatioSplit(synthetic(num_users=40, num_items=60, seed=5), (0.8, 0.1, 0.1), max_len=6)
    ds = TrainDataset(split, negatives=negatives, num_negatives=3, seed=1, epoch=0)
    batches = list(DataLoader(ds, batch_size=10, collate_fn=ds.collate))
    it = list(ShardedTrainBatches(split, 10, negatives=negatives, num_negatives=3, seed=1, epoch=0, shuffle=False))
    direct = list(split.train_batches(10, negatives=negatives, num_negatives=3, seed=1, epoch=0, shuffle=False))
    for a, b, c in zip(batches, it, direct, strict=True):
        for x, y, z in zip(a[:-1], b[:-1], c[:-1]):  # tensor fields (features: empty)
            assert torch.equal(x, y) and torch.equal(y, z)
    for b in batches:
        assert b.negative_ids.shape == (*b.target_ids.shape, 3)
        real = b.target_ids != 0
        assert (b.negative_ids[real] > 0).all() and (b.negative_ids[~real] == 0).all()


def test_collate_train_field_by_field(split):
    rows = TrainDataset(split, seed=0).__getitems__([0, 1, 2])
    batch = collate_train(rows)
    assert batch.input_ids.shape == (3, split.max_len) and batch.users.shape == (3,)
    # a field absent (None) in every row stays absent; in some rows only, an error names it
    assert collate_train([r._replace(negative_ids=None) for r in rows]).negative_ids is None
    with pytest.raises(ValueError, match="field 'negative_ids' is None in some rows only"):
        collate_train([rows[0]._replace(negative_ids=None), rows[1]])
    with pytest.raises(ValueError, match="no items"):
        collate_train([])


def test_features_travel_through_rows_collate_and_to(split):
    from seqrec.data.torch_data import _rows

    batch = TrainDataset(split, seed=0)[[0, 1, 2]]
    assert batch.features == {} and batch.lengths.dtype == torch.int64
    assert torch.equal(batch.lengths, (batch.input_ids != 0).sum(1))
    side = {"price": batch.input_ids.double() / 4, "tags": torch.stack([batch.input_ids] * 2, -1)}
    batch = batch._replace(features=side)
    rows = _rows(batch)
    assert rows[1].features["tags"].shape == (split.max_len, 2)
    back = collate_train(rows)
    assert back.features.keys() == side.keys()
    assert all(torch.equal(back.features[k], side[k]) for k in side)
    moved = back.to("cpu")
    assert torch.equal(moved.features["price"], side["price"]) and torch.equal(moved.lengths, batch.lengths)
    with pytest.raises(ValueError, match=r"row 1 has features \['price'\], row 0 has \['price', 'tags'\]"):
        collate_train([rows[0], rows[1]._replace(features={"price": side["price"][1]})])


@pytest.mark.parametrize("negatives", ["uniform", "in-batch"])
def test_batch_sampler_fast_path_equals_row_path(split, negatives):
    from torch.utils.data import BatchSampler, RandomSampler

    ds = TrainDataset(split, seed=SEED, epoch=EPOCH, negatives=negatives, num_negatives=2)
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(1)), BATCH, False)
    fast = list(DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2))
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(1)), BATCH, False)
    rows = list(DataLoader(ds, batch_sampler=sampler, collate_fn=ds.collate))
    assert len(fast) == len(rows)
    for a, b in zip(fast, rows):
        for x, y in zip(a[:-1], b[:-1]):
            assert torch.equal(x, y)
        assert a.features == b.features == {}
    assert set(positions(fast).values()) == {1} and len(positions(fast)) == sum(int(b.lengths.sum()) for b in fast)


def test_rank_and_world_size_default_to_torch_distributed(split, monkeypatch):
    from seqrec.data.torch_data import resolve_rank

    assert resolve_rank(None, None) == (0, 1)  # no process group
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    it = ShardedTrainBatches(split, BATCH, seed=SEED, epoch=EPOCH)
    assert (it.rank, it.world_size) == (1, 2)
    explicit = ShardedTrainBatches(split, BATCH, seed=SEED, epoch=EPOCH, rank=1, world_size=2)
    assert [b.users.tolist() for b in it] == [b.users.tolist() for b in explicit]
    assert resolve_rank(0, None) == (0, 2)  # an explicit argument wins
