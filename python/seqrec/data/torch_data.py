"""``torch.utils.data`` faces of a split: a map-style dataset and a sharded iterable.

* :class:`TrainDataset` (map-style): item ``i`` = the ``i``-th training user's whole
  training sequence (inputs, next-item targets, negatives): a :data:`TrainItem`, one
  row of a :class:`~seqrec.data.TrainBatch` without the batch dimension.
  Negatives are a pure function of (seed, epoch, user) (and the position), so any
  sampler, shuffling or worker count gives every item the same content; call
  :meth:`~TrainDataset.set_epoch` before each epoch (as with ``DistributedSampler``).
  ``collate_fn=dataset.collate`` stacks items into the trainer's
  :class:`~seqrec.data.TrainBatch` (and draws in-batch negatives, which depend on the
  batch). Fetching a batch is one C++ call (``__getitems__``); indexing with a list of
  indices returns the collated batch directly (no per-row split and re-stack), so
  ``DataLoader(ds, sampler=BatchSampler(RandomSampler(ds), B, False), batch_size=None)``
  is the fastest map-style path. DataLoader workers copy
  the dataset when an iterator starts, so ``set_epoch`` reaches them then; with
  ``persistent_workers=True`` it would not: leave that off or rebuild the loader.
* :class:`ShardedTrainBatches` (iterable): yields whole :class:`TrainBatch` es of one
  epoch, each exactly once across DataLoader workers AND DDP ranks. Use it with
  ``DataLoader(ds, batch_size=None, num_workers=...)``.

Sharding rule (a deterministic function of (seed, epoch, rank, world size)): the epoch's
user order is ``split.train_order(seed, epoch)``; global step ``s`` holds the users
``order[s*B:(s+1)*B]`` (``B = batch_size``, the GLOBAL batch); rank ``r`` of ``W`` takes
rows ``r, r+W, r+2W, ...`` of it; DataLoader worker ``w`` of ``K`` builds the steps
``s = w, w+K, ...`` of its rank, and the DataLoader's round-robin over workers yields
them in step order. So one process with batch B and W ranks with the same B see the
same users at every step, with the same negatives (uniform and popularity negatives
depend only on the user; in-batch negatives come from the rank's own rows).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .negatives import make_sampler
from .splits import build_train_batch
from .split import TrainBatch

__all__ = ["TrainItem", "TrainDataset", "ShardedTrainBatches", "collate_train", "resolve_rank"]


#: One training sequence: a :class:`TrainBatch` whose tensors lack the batch dimension
#: (users ``[]``, input_ids/target_ids ``[n]``, negative_ids ``[n]`` or ``[n, k]``,
#: lengths ``[]``); :func:`collate_train` stacks them back. The same type, so fields the
#: batch type gains travel through the map-style path unchanged.
TrainItem = TrainBatch


def collate_train(items: Sequence[TrainBatch]) -> TrainBatch:
    """Stack rows (:data:`TrainItem`) into a :class:`TrainBatch`, field by field (a
    field that is None in every row stays None)."""
    if len(items) == 0:
        raise ValueError("collate_train: no items to collate")
    kind = type(items[0])
    columns = []
    for name, column in zip(kind._fields, zip(*items)):
        if name == "features":
            columns.append(_collate_features(column))
        elif all(c is None for c in column):
            columns.append(None)
        elif any(c is None for c in column):
            raise ValueError(f"collate_train: field {name!r} is None in some rows only")
        else:
            columns.append(torch.stack(column))
    return kind(*columns)


def _collate_features(rows) -> dict[str, torch.Tensor]:
    """Stack the rows' ``features`` mappings key by key (every row must have the same keys)."""
    keys = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != keys:
            raise ValueError(f"collate_train: row {i} has features {sorted(row)}, row 0 has {sorted(keys)}")
    return {k: torch.stack([row[k] for row in rows]) for k in rows[0]}


def _rows(batch: TrainBatch) -> list[TrainBatch]:
    n = batch.users.shape[0]
    columns = [(None,) * n if t is None else t.unbind(0) for t in batch[:-1]]  # unbind: one call per field
    features = {k: v.unbind(0) for k, v in batch.features.items()}
    return [type(batch)._make((*row, {k: v[i] for k, v in features.items()}))
            for i, row in enumerate(zip(*columns))]


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class TrainDataset(Dataset):
    """Map-style dataset over a split's training users (see the module docstring).

    Args:
        split: a :class:`~seqrec.data.LeaveOneOutSplit` or :class:`~seqrec.data.splits.PrefixSplit`.
        num_negatives: negatives per position.
        negatives: 'uniform', 'popularity', 'in-batch' or a
            :class:`~seqrec.data.negatives.NegativeSampler`.
        seed, epoch: the random draws' inputs; :meth:`set_epoch` changes the epoch.
    """

    def __init__(self, split, *, num_negatives: int = 1, negatives="uniform", seed: int = 0, epoch: int = 0):
        self.split = split
        self.num_negatives = _check_count("num_negatives", num_negatives, 0)
        self.sampler = make_sampler(negatives, split)
        self.seed = int(seed)
        self.epoch = _check_count("epoch", epoch, 0)
        self.users = np.asarray(split.train_users, np.int64)
        self._in_batch = self.sampler.name == "in-batch"

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's negatives (call before creating the DataLoader iterator)."""
        self.epoch = _check_count("epoch", epoch, 0)

    def __len__(self) -> int:
        return len(self.users)

    def _index(self, indices) -> np.ndarray:
        idx = np.asarray(indices, np.int64).reshape(-1)
        bad = np.flatnonzero((idx < -len(self)) | (idx >= len(self)))
        if len(bad):
            raise IndexError(f"TrainDataset index {idx[bad[0]]} out of range for {len(self)} training sequences")
        return self.users[idx]

    def __getitems__(self, indices) -> list[TrainBatch]:
        users = self._index(indices)
        batch = build_train_batch(self.split, users, seed=self.seed, epoch=self.epoch,
                                  num_negatives=0 if self._in_batch else self.num_negatives,
                                  negatives="uniform" if self._in_batch else self.sampler)
        return _rows(batch)

    def __getitem__(self, index):
        """Item ``index`` (an int); a sequence of indices gives their whole collated
        :class:`TrainBatch` at once, the fast path for
        ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)``."""
        if isinstance(index, (int, np.integer)):
            return self.__getitems__([index])[0]
        users = self._index(index)
        if len(users) == 0:
            raise ValueError("TrainDataset: an empty list of indices")
        if self._in_batch:
            return self.collate(self.__getitems__(index))
        return build_train_batch(self.split, users, seed=self.seed, epoch=self.epoch,
                                 num_negatives=self.num_negatives, negatives=self.sampler)

    def collate(self, items: Sequence[TrainBatch]) -> TrainBatch:
        """:func:`collate_train`, then in-batch negatives when the sampler is 'in-batch'."""
        batch = collate_train(items)
        if not self._in_batch:
            return batch
        neg = self.sampler.sample(batch.users.numpy(), batch.target_ids.numpy(), self.num_negatives,
                                  seed=self.seed, epoch=self.epoch)
        negatives = torch.from_numpy(neg)
        if self.num_negatives == 1:
            negatives = negatives.squeeze(-1)
        return batch._replace(negative_ids=negatives)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments, else torch.distributed's when it is
    initialised, else ``(0, 1)``."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    world_size = _check_count("world_size", world_size, 1)
    rank = _check_count("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must lie in 0..world_size-1 = 0..{world_size - 1}, got {rank}")
    return rank, world_size


class ShardedTrainBatches(IterableDataset):
    """One epoch of training batches, sharded over DataLoader workers and DDP ranks.

    Args:
        split: as :class:`TrainDataset`.
        batch_size: users per GLOBAL step (all ranks together); rank ``r`` gets the
            rows ``r::world_size`` of each step.
        seed, epoch, num_negatives, negatives: as :class:`TrainDataset`.
        shuffle: shuffle the users (by (seed, epoch)); else training-user order.
        drop_last: drop the last global step when it has fewer than ``batch_size``
            users. Without it, a rank that gets no row of the last step (fewer users
            left than ranks) yields one batch less: under DDP use ``drop_last=True``
            or a user count that avoids it (``len(self)`` is exact per rank).
        rank, world_size: default to torch.distributed's when initialised, else 0, 1.
        start_batch: first global step (resume mid-epoch).
        with_log_q: add each negative's log expected count to ``features``
            (:func:`~seqrec.data.splits.build_train_batch`), for a log-Q corrected
            sampled softmax.
    """

    def __init__(self, split, batch_size: int, *, seed: int = 0, epoch: int = 0, num_negatives: int = 1,
                 negatives="uniform", shuffle: bool = True, drop_last: bool = False, rank: int | None = None,
                 world_size: int | None = None, start_batch: int = 0, with_log_q: bool = False):
        self.split = split
        self.batch_size = _check_count("batch_size", batch_size, 1)
        self.seed = int(seed)
        self.epoch = _check_count("epoch", epoch, 0)
        self.num_negatives = _check_count("num_negatives", num_negatives, 0)
        self.sampler = make_sampler(negatives, split)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.start_batch = _check_count("start_batch", start_batch, 0)
        self.with_log_q = bool(with_log_q)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle and draw negatives for ``epoch`` (call before iterating)."""
        self.epoch = _check_count("epoch", epoch, 0)

    @property
    def num_steps(self) -> int:
        """Global steps of an epoch (from ``start_batch`` on)."""
        n = len(self.split.train_users)
        steps = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return max(steps - self.start_batch, 0)

    def _step_users(self, order: np.ndarray, step: int) -> np.ndarray:
        return order[step * self.batch_size:(step + 1) * self.batch_size][self.rank::self.world_size]

    def __len__(self) -> int:
        """Batches this rank yields in one epoch."""
        n = len(self.split.train_users)
        last = self.start_batch + self.num_steps - 1
        if self.num_steps == 0:
            return 0
        rows_last = min(self.batch_size, n - last * self.batch_size)
        return self.num_steps - (1 if self.rank >= rows_last else 0)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        order = self.split.train_order(self.seed, self.epoch, self.shuffle)
        first = self.start_batch
        for step in range(first + worker, first + self.num_steps, workers):
            users = self._step_users(order, step)
            if len(users) == 0:
                continue
            yield build_train_batch(self.split, users, seed=self.seed, epoch=self.epoch,
                                    num_negatives=self.num_negatives, negatives=self.sampler,
                                    with_log_q=self.with_log_q)
