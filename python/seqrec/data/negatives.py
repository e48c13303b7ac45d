"""Negative samplers for training, with the log-Q values a sampled softmax needs.

Three distributions (pick one by name or pass an instance wherever ``negatives=`` is
accepted: :meth:`PrefixSplit.train_batches`, :class:`~seqrec.data.TrainDataset`,
:class:`~seqrec.data.ShardedTrainBatches`):

* ``"uniform"`` (:class:`UniformNegatives`, today's default): items drawn uniformly from
  those the user never interacted with, by the C++ engine while it builds the batch.
  ``log q(i) = -log(#items the user never interacted with)``.
* ``"popularity"`` (:class:`PopularityNegatives`): items drawn with replacement with
  probability ``q(i) = c_i^alpha / sum_j c_j^alpha``, ``c_i`` the item's count in the
  split's training part (never the padding id 0; items never trained on are never
  drawn). The user's own items are NOT excluded, so ``q`` is the exact sampling
  probability and ``log q`` the exact log-Q correction; a sampled softmax should mask
  accidental hits (a negative equal to the position's target).
* ``"in-batch"`` (:class:`InBatchNegatives`): for each real position, items drawn
  uniformly from the targets of the batch's OTHER rows, never equal to the position's
  own target. ``log q(i) = log(n_i / m)``: the share of the batch's m real target
  positions that hold item i (the unconditional in-batch probability, the usual
  correction, e.g. Yi et al., RecSys 2019).

* a mix (:class:`MixedNegatives`, ``"uniform,popularity"`` or with shares
  ``"uniform:1,popularity:3"``): each position's ``m`` negatives split between the
  samplers (largest remainders), concatenated in the order given. The expected count
  of item i among the m draws is ``sum_s m_s q_s(i)``; its log is the correction
  (:meth:`NegativeSampler.log_expected_count`).

Every draw is counter based: a pure function of (seed, epoch, user, position from the
end of the training prefix, draw index), or for in-batch of the batch's rows, so a
batch's negatives do not depend on the worker or process that built it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["NegativeSampler", "UniformNegatives", "PopularityNegatives", "InBatchNegatives", "MixedNegatives",
           "make_sampler", "parse_negatives", "train_item_counts", "SAMPLERS", "NEGATIVE_LOG_Q"]

#: The key of ``TrainBatch.features`` that holds ``log(m q(i))`` of each sampled negative
#: ([B, n] or [B, n, m], as ``negative_ids``; see :meth:`NegativeSampler.log_expected_count`).
NEGATIVE_LOG_Q = "negative_log_q"

#: The samplers by name (what ``negatives=`` and ``--negatives`` accept, alone or mixed).
SAMPLERS = ("uniform", "popularity", "in-batch")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Streams of the Python samplers, apart from the engine's (split.py uses 1<<40 .. 3<<40).
STREAM_POPULARITY = 5 << 40
STREAM_IN_BATCH = 6 << 40
STREAM_EVAL_POPULARITY = 7 << 40


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def counter_uniform(seed: int, stream: int, *keys) -> np.ndarray:
    """Uniform floats in [0, 1), one per element of the broadcast ``keys`` (integer
    arrays): a hash of (seed, stream, keys...), so a value depends on its keys only."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF) + _GOLDEN) ^ (np.uint64(int(stream) & 0xFFFFFFFFFFFFFFFF)
                                                                          * _GOLDEN)
        h = np.asarray(h, np.uint64)
        for key in keys:
            h = _mix(h ^ (np.asarray(key).astype(np.int64).view(np.uint64) + _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def train_item_counts(split) -> np.ndarray:
    """``[num_items + 1]`` count of each item in ``split``'s training part (index 0 = 0):
    every user's training prefix (:meth:`~seqrec.data.splits.PrefixSplit.train_item_counts`)."""
    return split.train_item_counts()


class NegativeSampler:
    """Draws negatives for the positions of a training batch.

    Subclasses set ``name`` and implement :meth:`sample` (``engine_draws`` True means the
    C++ engine draws them while building the batch) and :meth:`log_q`.
    """

    name = "?"
    engine_draws = False

    def sample(self, users: np.ndarray, target_ids: np.ndarray, num_negatives: int, *, seed: int,
               epoch: int) -> np.ndarray:
        """``[B, n, num_negatives]`` int64 negatives for ``target_ids [B, n]`` (0 at padding,
        i.e. where the target is 0) of rows ``users [B]``."""
        raise NotImplementedError

    def log_q(self, items: Tensor, users: Tensor | None = None, target_ids: Tensor | None = None) -> Tensor:
        """log of the probability with which each of ``items`` is drawn (0 at padding id 0)."""
        raise NotImplementedError

    def engine_count(self, num_negatives: int) -> int:
        """How many of a position's ``num_negatives`` the C++ engine draws (uniform ones)."""
        return num_negatives if self.engine_draws else 0

    def log_expected_count(self, items: Tensor, num_negatives: int, users: Tensor | None = None,
                           target_ids: Tensor | None = None) -> Tensor:
        """``log(num_negatives * q(i))`` for each of ``items``: the log of the expected
        number of times item i is among a position's ``num_negatives`` draws, the
        correction :func:`~seqrec.models.losses.sampled_softmax_loss` subtracts
        (0 at padding id 0). Float32, on ``items``' device."""
        out = self.log_q(items, users, target_ids) + math.log(max(int(num_negatives), 1))
        return out.masked_fill(torch.as_tensor(items) == 0, 0.0).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class UniformNegatives(NegativeSampler):
    """Uniform among the items the user never interacted with (drawn by the C++ engine).

    ``log q(i) = -log(num_items - distinct items of the user)`` (needs ``users``).
    """

    name = "uniform"
    engine_draws = True

    def __init__(self, dataset):
        self.dataset = dataset
        self._log_q_user: np.ndarray | None = None  # computed on first use (a sort of all interactions)

    def _per_user(self) -> np.ndarray:
        if self._log_q_user is None:
            ds = self.dataset
            owner = np.repeat(np.arange(ds.num_users, dtype=np.int64), ds.lengths)
            pairs = np.unique(owner * (ds.num_items + 1) + ds.items)
            distinct = np.bincount(pairs // (ds.num_items + 1), minlength=ds.num_users)
            self._log_q_user = -np.log(np.maximum(ds.num_items - distinct, 1).astype(np.float64))
        return self._log_q_user

    def log_q(self, items: Tensor, users: Tensor | None = None, target_ids: Tensor | None = None) -> Tensor:
        if users is None:
            raise ValueError("UniformNegatives.log_q needs the batch's users: q depends on each user's history")
        items = torch.as_tensor(items)
        per_user = torch.from_numpy(self._per_user())[torch.as_tensor(users).cpu()]
        out = per_user.reshape(-1, *([1] * (items.dim() - 1))).expand(items.shape).to(items.device)
        return torch.where(items == 0, torch.zeros((), dtype=out.dtype, device=out.device), out)


class PopularityNegatives(NegativeSampler):
    """With replacement, ``q(i) ∝ counts[i] ** alpha`` over items 1..num_items.

    Args:
        counts: ``[num_items + 1]`` non-negative counts (index 0, padding, is ignored);
            :meth:`from_split` uses the split's training part.
        alpha: popularity exponent (1: proportional; 0.75 is word2vec's smoothing;
            0: uniform over items with a nonzero count).
    """

    name = "popularity"

    def __init__(self, counts, alpha: float = 1.0):
        counts = np.asarray(counts)
        if counts.ndim != 1 or len(counts) < 2:
            raise ValueError(f"counts must be [num_items + 1] with num_items >= 1, got shape {counts.shape}")
        if not np.all(np.isfinite(counts)) or counts.min() < 0:
            raise ValueError("counts must be finite and >= 0")
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        weight = np.zeros(len(counts), np.float64)
        positive = counts[1:] > 0
        weight[1:][positive] = counts[1:][positive].astype(np.float64) ** alpha
        total = weight.sum()
        if total <= 0:
            raise ValueError("popularity negatives need at least one item with a positive count")
        self.alpha = float(alpha)
        self.q = weight / total  # [num_items + 1], q[0] == 0
        self._cdf = np.cumsum(weight[1:])
        self._total = total
        with np.errstate(divide="ignore"):
            self._log_q = np.log(self.q)
        self._log_q[0] = 0.0

    @classmethod
    def from_split(cls, split, alpha: float = 1.0) -> "PopularityNegatives":
        """Counts from the split's training part (:func:`train_item_counts`): no
        evaluation target shapes the distribution."""
        return cls(train_item_counts(split), alpha)

    @property
    def num_items(self) -> int:
        return len(self.q) - 1

    def draw(self, u: np.ndarray) -> np.ndarray:
        """Items for uniforms ``u`` in [0, 1) by inverting the distribution function."""
        idx = np.searchsorted(self._cdf, u * self._total, side="right")
        return np.minimum(idx, len(self._cdf) - 1) + 1

    def sample(self, users, target_ids, num_negatives, *, seed, epoch):
        users = np.asarray(users, np.int64)
        target_ids = np.asarray(target_ids)
        b, n = target_ids.shape
        from_end = np.arange(n - 1, -1, -1, dtype=np.int64)  # position counted from the newest
        u = counter_uniform(seed, STREAM_POPULARITY + int(epoch), users[:, None, None], from_end[None, :, None],
                            np.arange(num_negatives, dtype=np.int64)[None, None, :])
        out = self.draw(u)
        out[target_ids == 0] = 0
        return out.astype(np.int64)

    def log_q(self, items, users=None, target_ids=None):
        items = torch.as_tensor(items)
        return torch.from_numpy(self._log_q)[items.cpu()].to(items.device)

    def __repr__(self) -> str:
        return f"PopularityNegatives(num_items={self.num_items}, alpha={self.alpha})"


class InBatchNegatives(NegativeSampler):
    """Targets of the batch's other rows, never the position's own target.

    A negative of position (b, t) is drawn uniformly from the real target positions of
    rows other than b whose item differs from ``target_ids[b, t]`` (rejection
    sampling on a counter-based stream). A position with no such target (every other
    row holds only its item) raises ValueError: the batch is too small for in-batch
    negatives.
    """

    name = "in-batch"
    max_rounds = 64

    def sample(self, users, target_ids, num_negatives, *, seed, epoch):
        users = np.asarray(users, np.int64)
        target_ids = np.asarray(target_ids)
        b, n = target_ids.shape
        out = np.zeros((b, n, num_negatives), np.int64)
        rows, cols = np.nonzero(target_ids)
        if len(rows) == 0 or num_negatives == 0:
            return out
        pool_item = target_ids[rows, cols]
        pool_row = rows
        m = len(pool_item)
        # Entries to fill: (position p, draw j).
        pos = np.repeat(np.arange(m), num_negatives)
        draw = np.tile(np.arange(num_negatives, dtype=np.int64), m)
        key_user = users[rows][pos]
        key_from_end = (n - 1 - cols)[pos]
        result = np.zeros(len(pos), np.int64)
        todo = np.arange(len(pos))
        for attempt in range(self.max_rounds):
            u = counter_uniform(seed, STREAM_IN_BATCH + int(epoch), key_user[todo], key_from_end[todo],
                                draw[todo], attempt)
            pick = np.minimum((u * m).astype(np.int64), m - 1)
            ok = (pool_row[pick] != pool_row[pos[todo]]) & (pool_item[pick] != pool_item[pos[todo]])
            result[todo[ok]] = pool_item[pick[ok]]
            todo = todo[~ok]
            if len(todo) == 0:
                break
        # Rare leftovers (few allowed targets): draw exactly among the allowed ones.
        for e in todo:
            p = pos[e]
            allowed = np.flatnonzero((pool_row != pool_row[p]) & (pool_item != pool_item[p]))
            if len(allowed) == 0:
                raise ValueError(f"in-batch negatives: row {pool_row[p]} (user {users[pool_row[p]]}) has no "
                                 f"target of another row that differs from its own item {pool_item[p]}; "
                                 "use a larger batch")
            u = counter_uniform(seed, STREAM_IN_BATCH + int(epoch), key_user[e], key_from_end[e], draw[e],
                                self.max_rounds)
            result[e] = pool_item[allowed[min(int(u * len(allowed)), len(allowed) - 1)]]
        out[rows[pos], cols[pos], draw] = result
        return out

    def log_q(self, items, users=None, target_ids=None):
        if target_ids is None:
            raise ValueError("InBatchNegatives.log_q needs the batch's target_ids: q is the in-batch frequency")
        items = torch.as_tensor(items)
        targets = torch.as_tensor(target_ids).reshape(-1)
        targets = targets[targets != 0]
        size = int(max(int(items.max()) if items.numel() else 0, int(targets.max()) if targets.numel() else 0)) + 1
        freq = torch.bincount(targets.cpu(), minlength=size).double() / max(len(targets), 1)
        out = torch.log(freq)[items.cpu()]
        out[items.cpu() == 0] = 0.0
        return out.to(items.device)


class MixedNegatives(NegativeSampler):
    """Several samplers' draws side by side: of a position's m negatives, a share goes to
    each sampler (``shares`` normalised, counts by largest remainders, ties to the
    first), concatenated in the order given (the uniform ones drawn by the C++ engine).

    The m draws together have expected count ``sum_s m_s q_s(i)`` of item i, so the
    correction is ``log sum_s m_s q_s(i)`` (the balance heuristic of multiple importance
    sampling; unbiased wherever some sampler can draw i). Uniform's q is taken as
    ``1 / (items the user never interacted with)`` for every item, also for an item of
    the user's history that another sampler drew (its true uniform q is 0): a slight
    over-count of those rare draws.

    Args:
        parts: ``[(sampler, share), ...]`` with shares > 0; at most one uniform part.
    """

    name = "mix"

    def __init__(self, parts):
        parts = list(parts)
        if not parts:
            raise ValueError("MixedNegatives needs at least one (sampler, share)")
        for sampler, share in parts:
            if not isinstance(sampler, NegativeSampler) or isinstance(sampler, MixedNegatives):
                raise ValueError(f"MixedNegatives parts must be plain NegativeSamplers, got {sampler!r}")
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) \
                    or share <= 0:
                raise ValueError(f"MixedNegatives share of {sampler.name} must be a positive number, got {share!r}")
        if sum(s.engine_draws for s, _ in parts) > 1:
            raise ValueError("MixedNegatives: at most one uniform part (the engine draws one set)")
        # The engine's draws come first in the batch: put the uniform part first.
        self.parts = sorted(parts, key=lambda p: not p[0].engine_draws)

    def counts(self, num_negatives: int) -> list[int]:
        """Negatives per part for a position's ``num_negatives``, in ``self.parts`` order."""
        shares = np.array([share for _, share in self.parts], np.float64)
        exact = shares / shares.sum() * int(num_negatives)
        counts = np.floor(exact).astype(np.int64)
        for i in np.argsort(-(exact - counts), kind="stable")[: int(num_negatives) - int(counts.sum())]:
            counts[i] += 1
        return [int(c) for c in counts]

    def engine_count(self, num_negatives: int) -> int:
        return sum(c for (s, _), c in zip(self.parts, self.counts(num_negatives)) if s.engine_draws)

    def sample(self, users, target_ids, num_negatives, *, seed, epoch, drawn=None):
        """As :meth:`NegativeSampler.sample`; ``drawn`` ``[B, n, engine_count]``: the
        engine's uniform draws (required when a part is uniform)."""
        out = []
        for (sampler, _), count in zip(self.parts, self.counts(num_negatives)):
            if sampler.engine_draws:
                if drawn is None or drawn.shape[-1] != count:
                    raise ValueError(f"MixedNegatives.sample: the uniform part needs the engine's {count} draws")
                out.append(np.asarray(drawn, np.int64).reshape(*np.shape(target_ids), count))
            else:
                out.append(sampler.sample(users, target_ids, count, seed=seed, epoch=epoch))
        return np.concatenate(out, axis=-1)

    def log_q(self, items, users=None, target_ids=None):
        raise ValueError("MixedNegatives has no single q: use log_expected_count(items, num_negatives, ...)")

    def log_expected_count(self, items, num_negatives, users=None, target_ids=None):
        items = torch.as_tensor(items)
        terms = [sampler.log_q(items, users, target_ids).double() + math.log(count)
                 for (sampler, _), count in zip(self.parts, self.counts(num_negatives)) if count > 0]
        out = torch.logsumexp(torch.stack(terms), 0)
        return out.masked_fill(items == 0, 0.0).float()

    def __repr__(self) -> str:
        return "MixedNegatives(" + ", ".join(f"{s!r}: {share}" for s, share in self.parts) + ")"


def parse_negatives(spec: str) -> list[tuple[str, float]]:
    """``"uniform"`` -> ``[("uniform", 1.0)]``; ``"uniform,popularity:3"`` ->
    ``[("uniform", 1.0), ("popularity", 3.0)]`` (names from :data:`SAMPLERS`, shares
    positive numbers, default 1, each name once)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"negatives must be a sampler name or a mix like 'uniform,popularity:3', got {spec!r}")
    parts = []
    for item in spec.split(","):
        name, _, share = item.strip().partition(":")
        if name not in SAMPLERS:
            raise ValueError(f"negatives {spec!r}: unknown sampler {name!r}; choose from {', '.join(SAMPLERS)} "
                             "(mix them as 'uniform,popularity' or with shares 'uniform:1,popularity:3')")
        try:
            value = float(share) if share else 1.0
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"negatives {spec!r}: the share of {name!r} must be a positive number, got {share!r}")
        if name in (p[0] for p in parts):
            raise ValueError(f"negatives {spec!r}: {name!r} appears twice")
        parts.append((name, value))
    return parts


def make_sampler(negatives, split) -> NegativeSampler:
    """A :class:`NegativeSampler` from a name ('uniform', 'popularity', 'in-batch'), a mix
    of them (``"uniform,popularity"``, ``"uniform:1,in-batch:3"``: :class:`MixedNegatives`)
    or an instance (returned as is)."""
    if isinstance(negatives, NegativeSampler):
        return negatives
    if not isinstance(negatives, str):
        raise ValueError(f"negatives must be a sampler name, a mix of them or a NegativeSampler, got {negatives!r}")
    parts = parse_negatives(negatives)

    def one(name: str) -> NegativeSampler:
        if name == "uniform":
            return UniformNegatives(split.dataset)
        if name == "popularity":
            return PopularityNegatives.from_split(split)
        return InBatchNegatives()

    if len(parts) == 1:
        return one(parts[0][0])
    return MixedNegatives([(one(name), share) for name, share in parts])
