"""Leave-one-out split, training batches, evaluation inputs and sampled candidates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, NamedTuple

import numpy as np
import torch

from .._loader import _C
from .dataset import DataError, SequenceDataset

_engine = _C.data

# Streams keep the random draws of different purposes independent for one seed.
_STREAM_SAMPLED = {"valid": 1 << 40, "test": 2 << 40}
_STREAM_TRAIN = 3 << 40


class _NoFeatures(dict):
    """The default ``TrainBatch.features``: empty, read-only (one object shared by every
    batch), and picklable (batches cross DataLoader worker processes)."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("TrainBatch.features defaults to a shared read-only mapping; build the batch with "
                        "features={...} (or batch._replace(features=...)) to add features")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _read_only

    def __reduce__(self):
        return (_NoFeatures, ())


_NO_FEATURES = _NoFeatures()


class TrainBatch(NamedTuple):
    """One training batch; every tensor is int64, sequences LEFT-padded with 0.

    users: ``[B]`` dense user ids. input_ids: ``[B, n]`` items. target_ids: ``[B, n]``
    the next item at every position (0 at padding). negative_ids: ``[B, n]`` one
    negative per position (``[B, n, k]`` when k > 1 negatives were asked for; 0 at
    padding). lengths: ``[B]`` number of real positions (models build their padding
    masks from it). features: per-position side features, see below.
    """

    users: torch.Tensor
    input_ids: torch.Tensor
    target_ids: torch.Tensor
    negative_ids: torch.Tensor
    lengths: torch.Tensor
    #: Per-position side features gathered by the data side, ``name -> [B, n, ...]``
    #: tensors aligned with ``input_ids`` (empty when the data side gathers none).
    #: The default is a shared read-only empty mapping: build a new dict to add features.
    features: Mapping[str, torch.Tensor] = _NO_FEATURES

    def to(self, device) -> "TrainBatch":
        tensors = (None if t is None else t.to(device, non_blocking=True) for t in self[:-1])
        features = {k: v.to(device, non_blocking=True) for k, v in self.features.items()}
        return TrainBatch(*tensors, features=features)


class EvalBatch(NamedTuple):
    """Evaluation inputs for a set of users.

    users ``[U]``; input_ids ``[U, n]`` (the last n items before the target, LEFT-padded);
    lengths ``[U]``; target ``[U]``; history_indptr ``[U + 1]`` / history_items: the
    whole prefix before the target, untruncated (the items excluded from full ranking).
    """

    users: torch.Tensor
    input_ids: torch.Tensor
    lengths: torch.Tensor
    target: torch.Tensor
    history_indptr: torch.Tensor
    history_items: torch.Tensor


@dataclass(frozen=True)
class SplitInfo:
    """What the split is, for every printed or saved result."""

    name: str = "leave-one-out"
    rule: str = "test = last item, valid = second last, train = every next item of the rest"
    max_len: int = 50
    eval_users: str = "users with at least 3 interactions"


class LeaveOneOutSplit:
    """Leave-one-out split of a :class:`SequenceDataset`.

    For a user with items ``x_1..x_T``: test target ``x_T`` (input ``x_1..x_{T-1}``), valid
    target ``x_{T-1}`` (input ``x_1..x_{T-2}``), training pairs ``(x_t -> x_{t+1})`` for
    ``t < T-2``. Users with fewer than 3 items are neither trained on nor evaluated
    (their items still count as history). Inputs keep the most recent ``max_len`` items.
    """

    def __init__(self, dataset: SequenceDataset, max_len: int = 50):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.dataset = dataset
        self.max_len = int(max_len)
        # Per-dataset, so computed once: recomputing it for every batch made an epoch
        # quadratic in the number of users (np.diff over all of them per batch).
        self._lengths = lengths = dataset.lengths
        self.eval_users = np.flatnonzero(lengths >= 3).astype(np.int64)
        # Training needs at least one (input, target) pair in x_1..x_{T-2}.
        self.train_users = np.flatnonzero(lengths >= 4).astype(np.int64)
        if len(self.eval_users) == 0:
            raise DataError(f"{dataset.name}: no user has the 3 interactions leave-one-out needs")
        self.info = SplitInfo(max_len=self.max_len)
        self._candidates: dict[tuple, np.ndarray] = {}

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    def _prefix(self, users: np.ndarray, stage: str) -> np.ndarray:
        bad = np.flatnonzero((users < 0) | (users >= self.dataset.num_users))
        if len(bad):
            raise DataError(f"users[{bad[0]}] = {users[bad[0]]} is not a user index in "
                            f"0..{self.dataset.num_users - 1}")
        lengths = self._lengths[users]
        offset = {"train": 2, "valid": 2, "test": 1}.get(stage)
        if offset is None:
            raise ValueError(f"stage must be 'train', 'valid' or 'test', got {stage!r}")
        return (lengths - offset).astype(np.int64)

    # ------------------------------------------------------------------ training
    def num_train_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self.train_users)
        return n // batch_size if drop_last else -(-n // batch_size)

    def train_order(self, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
        """The user order of one epoch: a pure function of (seed, epoch)."""
        if not shuffle:
            return self.train_users.copy()
        rng = np.random.default_rng([int(seed), int(epoch)])
        return self.train_users[rng.permutation(len(self.train_users))]

    def train_batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, num_negatives: int = 1,
                      shuffle: bool = True, drop_last: bool = False, start_batch: int = 0
                      ) -> Iterator[TrainBatch]:
        """Batches of one epoch, one row per user (all positions of its training prefix).

        Everything random (user order, negatives) is a function of ``(seed, epoch)`` and
        the user, so ``start_batch`` resumes an epoch exactly where it stopped.
        Negatives are drawn uniformly from the items the user never interacted with.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = self.train_order(seed, epoch, shuffle)
        n_batches = self.num_train_batches(batch_size, drop_last)
        ds = self.dataset
        for b in range(start_batch, n_batches):
            users = order[b * batch_size : (b + 1) * batch_size]
            inp, tgt, neg, lengths = _engine.train_batch(
                ds.indptr, ds.items, ds.num_items, users, self._prefix(users, "train"), self.max_len,
                num_negatives, int(seed), _STREAM_TRAIN + int(epoch))
            negatives = torch.from_numpy(neg)
            if num_negatives == 1:
                negatives = negatives.squeeze(-1)
            yield TrainBatch(torch.from_numpy(users.copy()), torch.from_numpy(inp), torch.from_numpy(tgt),
                             negatives, torch.from_numpy(lengths))

    # ------------------------------------------------------------------ evaluation
    def eval_batch(self, stage: str, users: np.ndarray | None = None) -> EvalBatch:
        """Inputs, targets and exclusion histories of ``stage`` ('valid' or 'test')."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        users = self.eval_users if users is None else np.asarray(users, np.int64)
        ds = self.dataset
        inp, lengths, target, h_indptr, h_items = _engine.eval_batch(
            ds.indptr, ds.items, ds.num_items, users, self._prefix(users, stage), self.max_len)
        return EvalBatch(torch.from_numpy(users.copy()), torch.from_numpy(inp), torch.from_numpy(lengths),
                         torch.from_numpy(target), torch.from_numpy(h_indptr), torch.from_numpy(h_items))

    def sampled_candidates(self, stage: str, num_negatives: int = 99, seed: int = 0) -> np.ndarray:
        """``[U, 1 + num_negatives]`` candidates per evaluated user: the target in column 0,
        then distinct items drawn uniformly from those the user never interacted with.

        Deterministic in (dataset, stage, num_negatives, seed), and cached, so every model
        is evaluated on the same candidates; :meth:`save_candidates` stores them.
        """
        key = (stage, int(num_negatives), int(seed))
        if key not in self._candidates:
            if stage not in _STREAM_SAMPLED:
                raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
            ds = self.dataset
            negatives = _engine.sample_unseen(ds.indptr, ds.items, ds.num_items, self.eval_users,
                                              int(num_negatives), int(seed), _STREAM_SAMPLED[stage])
            target = ds.items[ds.indptr[self.eval_users] + self._prefix(self.eval_users, stage)]
            self._candidates[key] = np.concatenate([target[:, None], negatives], axis=1)
        return self._candidates[key]

    def sampled_shortfall(self, num_negatives: int = 99) -> str | None:
        """Why :meth:`sampled_candidates` cannot draw ``num_negatives`` for every evaluated
        user (the first user with fewer unseen items), or None when it can; without
        drawing them. Unseen means outside the user's whole sequence, in either stage."""
        ds = self.dataset
        lengths = np.diff(ds.indptr)
        limit = ds.num_items - int(num_negatives)
        if len(self.eval_users) == 0 or lengths[self.eval_users].max() <= limit:
            return None  # no user has more distinct items than interactions
        owner = np.repeat(np.arange(ds.num_users, dtype=np.int64), lengths)
        pairs = np.unique(owner * (ds.num_items + 1) + ds.items)
        distinct = np.bincount(pairs // (ds.num_items + 1), minlength=ds.num_users)[self.eval_users]
        short = np.flatnonzero(distinct > limit)
        if len(short) == 0:
            return None
        user = int(self.eval_users[short[0]])
        return (f"user {user} has only {ds.num_items - int(distinct[short[0]])} unseen items, fewer than the "
                f"{num_negatives} negatives asked for ({len(short)} of {len(self.eval_users)} evaluated users "
                f"fall short; catalogue of {ds.num_items} items)")

    def save_candidates(self, path, stage: str, num_negatives: int = 99, seed: int = 0) -> None:
        """Write the sampled candidates (with their users) to an ``.npz`` file."""
        from ..utils import atomic_write

        cand = self.sampled_candidates(stage, num_negatives, seed)
        with atomic_write(path, "wb") as fh:
            np.savez(fh, users=self.eval_users, candidates=cand, seed=seed, stage=stage)
