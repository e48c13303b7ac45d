"""Splits beyond today's leave-one-out: global temporal and per-user ratio splits.

Every split here is a :class:`PrefixSplit`: each user's sequence stays in time order,
the user's training data is a PREFIX of it (the first ``train_prefix[u]`` items, all
their next-item pairs), and an evaluation instance is ``(user, p)``: input = the
first ``p`` items (the last ``max_len`` of them), target = item ``p``, the items
excluded from full ranking = the first ``p`` items. A split offers the interface the
:class:`~seqrec.train.Trainer` uses (``train_batches``, ``num_train_batches``,
``eval_batch``, ``sampled_candidates``, ``sampled_shortfall``, ``max_len``, ``info``),
so ``Trainer(model, split, config)`` runs on any of them.

* :class:`LeaveOneOut`: the leave-one-out split (also named
  :class:`~seqrec.data.LeaveOneOutSplit`, what ``SequenceDataset.leave_one_out``
  returns), with uniform or popularity-sampled evaluation negatives.
* :class:`TemporalSplit`: one global time cut (Sun et al., "Take a Fresh Look at
  Recommender Systems from an Evaluation Standpoint", SIGIR 2023; Ji et al., "A Critical
  Study on Data Leakage in Recommender System Offline Evaluation", TOIS 2023): nothing
  at or after the cut is trained on, so no training interaction is later than any
  evaluated one.
* :class:`RatioSplit`: per user, chronological, e.g. 80/10/10 percent.

Each prints its protocol card: ``split.describe()``; ``split.info.name`` is the split
named in :class:`~seqrec.eval.Protocol` cards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .._loader import _C
from .dataset import DataError, SequenceDataset
from .negatives import (NEGATIVE_LOG_Q, STREAM_EVAL_POPULARITY, MixedNegatives, PopularityNegatives, counter_uniform,
                        make_sampler)
from .split import _STREAM_SAMPLED, _STREAM_TRAIN, EvalBatch, TrainBatch

_engine = _C.data

__all__ = ["SplitCard", "PrefixSplit", "LeaveOneOut", "TemporalSplit", "RatioSplit"]

EVAL_NEGATIVES = ("uniform", "popularity")


@dataclass(frozen=True)
class SplitCard:
    """What a split is (the fields of :class:`~seqrec.data.split.SplitInfo`, plus the
    sampled protocol's negatives). ``name`` goes into every protocol card."""

    name: str
    rule: str
    max_len: int
    eval_users: str
    eval_negatives: str = "uniform"

    def describe(self) -> str:
        """The card, one field per line."""
        negatives = ("uniform among the user's unseen items" if self.eval_negatives == "uniform" else
                     "popularity-proportional among the user's unseen items (training counts, distinct)")
        return (f"split: {self.name}\n  rule: {self.rule}\n  evaluated: {self.eval_users}\n"
                f"  inputs: last {self.max_len} items\n  sampled-protocol negatives: {negatives}")


def _check_max_len(max_len) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    return int(max_len)


class PrefixSplit:
    """A split given by each user's training prefix and each stage's evaluation instances.

    Args:
        dataset: the :class:`SequenceDataset`.
        train_prefix: ``[num_users]`` int, how many of each user's first items are
            training data (its ``train_prefix - 1`` next-item pairs are trained on).
        instances: ``{"valid": (users [N], prefix [N]), "test": (...)}``: evaluation
            instance k predicts item ``prefix[k]`` (0-based) of user ``users[k]`` from
            the items before it; ``prefix[k] >= 1``.
        card: the :class:`SplitCard` (its ``max_len`` and ``eval_negatives`` are used).
    """

    def __init__(self, dataset: SequenceDataset, train_prefix: np.ndarray, instances: dict, card: SplitCard,
                 lengths: np.ndarray | None = None):
        if card.eval_negatives not in EVAL_NEGATIVES:
            raise ValueError(f"eval_negatives must be one of {EVAL_NEGATIVES}, got {card.eval_negatives!r}")
        self.dataset = dataset
        self.max_len = _check_max_len(card.max_len)
        self.info = card
        self.eval_negatives = card.eval_negatives
        # Per dataset, so computed once (a subclass that already has them passes them):
        # np.diff over every user per batch made an epoch quadratic in the users.
        self._lengths = lengths = dataset.lengths if lengths is None else lengths
        self._train_prefix = np.asarray(train_prefix, np.int64)
        if self._train_prefix.shape != (dataset.num_users,) or np.any(self._train_prefix < 0) \
                or np.any(self._train_prefix > lengths):
            raise ValueError("train_prefix must hold one count in 0..length per user")
        self.train_users = np.flatnonzero(self._train_prefix >= 2).astype(np.int64)
        self._instances: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for stage in ("valid", "test"):
            users, prefix = (np.asarray(a, np.int64) for a in instances[stage])
            if len(users) and (np.any(prefix < 1) or np.any(prefix >= lengths[users])):
                raise ValueError(f"{stage} instances: prefix must lie in 1..length-1 of its user")
            self._instances[stage] = (users, prefix)
        for stage in ("valid", "test"):
            if len(self._instances[stage][0]) == 0:
                raise DataError(f"{dataset.name}: {card.name} leaves no {stage} instance")
        self.eval_users = np.unique(np.concatenate([self._instances[s][0] for s in ("valid", "test")]))
        self._candidates: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ facts
    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    def describe(self) -> str:
        """The protocol card of this split (see :class:`SplitCard`), with its sizes."""
        sizes = (f"\n  sizes: {len(self.train_users)} training users, {int(self.train_mask().sum())} training "
                 f"interactions, {len(self._instances['valid'][0])} valid / {len(self._instances['test'][0])} "
                 "test instances")
        return self.info.describe() + sizes

    def instances(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """``(users [N], prefix [N])`` of a stage ('valid' or 'test')."""
        if stage not in self._instances:
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        return self._instances[stage]

    def _check_users(self, users) -> np.ndarray:
        users = np.asarray(users, np.int64)
        bad = np.flatnonzero((users < 0) | (users >= self.dataset.num_users))
        if len(bad):
            raise DataError(f"users[{bad[0]}] = {users[bad[0]]} is not a user index in "
                            f"0..{self.dataset.num_users - 1}")
        return users

    def train_prefix(self, users: np.ndarray) -> np.ndarray:
        """How many of each user's first items are training data."""
        return self._train_prefix[self._check_users(users)]

    def train_mask(self) -> np.ndarray:
        """``[num_interactions]`` bool: the interactions in a training prefix."""
        ds = self.dataset
        index_in_user = np.arange(ds.num_interactions) - np.repeat(ds.indptr[:-1], self._lengths)
        return index_in_user < np.repeat(self._train_prefix, self._lengths)

    def train_item_counts(self) -> np.ndarray:
        """``[num_items + 1]`` count of each item among the training interactions."""
        return np.bincount(self.dataset.items[self.train_mask()], minlength=self.num_items + 1)

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

    def build_train_batch(self, users: np.ndarray, *, seed: int, epoch: int, num_negatives: int = 1,
                          negatives="uniform", with_log_q: bool = False) -> TrainBatch:
        """The training rows of ``users`` (each row depends only on its user, the seed and
        the epoch; in-batch negatives also on the other rows); ``with_log_q`` as in
        :func:`build_train_batch`."""
        return build_train_batch(self, users, seed=seed, epoch=epoch, num_negatives=num_negatives,
                                 negatives=negatives, with_log_q=with_log_q)

    def train_batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, num_negatives: int = 1,
                      shuffle: bool = True, drop_last: bool = False, start_batch: int = 0,
                      negatives="uniform", with_log_q: bool = False) -> Iterator[TrainBatch]:
        """Batches of one epoch, one row per training user (all pairs of its training
        prefix, the last ``max_len``).

        Everything random (user order, negatives) is a function of ``(seed, epoch)`` and
        the user, so ``start_batch`` resumes an epoch exactly where it stopped. Negatives
        are drawn uniformly from the items the user never interacted with, or by
        ``negatives`` (a name, a mix or a :class:`~seqrec.data.negatives.NegativeSampler`);
        ``with_log_q`` adds their log-Q correction to ``features`` (see
        :func:`build_train_batch`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sampler = make_sampler(negatives, self)
        order = self.train_order(seed, epoch, shuffle)
        for b in range(start_batch, self.num_train_batches(batch_size, drop_last)):
            yield self.build_train_batch(order[b * batch_size:(b + 1) * batch_size], seed=seed, epoch=epoch,
                                         num_negatives=num_negatives, negatives=sampler, with_log_q=with_log_q)

    # ------------------------------------------------------------------ evaluation
    def _select(self, stage: str, users) -> tuple[np.ndarray, np.ndarray]:
        inst_users, prefix = self.instances(stage)
        if users is None:
            return inst_users, prefix
        users = self._check_users(users)
        missing = users[~np.isin(users, inst_users)]
        if len(missing):
            raise DataError(f"user {missing[0]} has no {stage} instance in the {self.info.name} split")
        keep = np.isin(inst_users, users)
        return inst_users[keep], prefix[keep]

    def eval_batch(self, stage: str, users: np.ndarray | None = None) -> EvalBatch:
        """Inputs, targets and exclusion histories of the ``stage`` instances (of
        ``users`` only, when given: every instance of each of them, in split order)."""
        users, prefix = self._select(stage, users)
        ds = self.dataset
        inp, lengths, target, h_indptr, h_items = _engine.eval_batch(
            ds.indptr, ds.items, ds.num_items, users, prefix, self.max_len)
        return EvalBatch(torch.from_numpy(users.copy()), torch.from_numpy(inp), torch.from_numpy(lengths),
                         torch.from_numpy(target), torch.from_numpy(h_indptr), torch.from_numpy(h_items))

    def _occurrence(self, users: np.ndarray) -> np.ndarray:
        """0 for a user's first instance in ``users``, 1 for its second, ..."""
        order = np.argsort(users, kind="stable")
        sorted_users = users[order]
        starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
        run = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
        out = np.empty(len(users), np.int64)
        out[order] = run
        return out

    def sampled_candidates(self, stage: str, num_negatives: int = 99, seed: int = 0) -> np.ndarray:
        """``[N, 1 + num_negatives]`` candidates per ``stage`` instance: the target in
        column 0, then distinct items the user never interacted with (in either stage),
        drawn uniformly or by training popularity (``eval_negatives``).

        Deterministic in (dataset, split, stage, num_negatives, seed) and cached. A
        user's k-th instance draws from its own stream, so a user evaluated on several
        items (ratio split) gets a fresh draw for each; with one instance per user,
        uniform candidates equal :meth:`LeaveOneOutSplit.sampled_candidates`'.
        """
        key = (stage, int(num_negatives), int(seed))
        if key not in self._candidates:
            users, prefix = self.instances(stage)
            ds = self.dataset
            occurrence = self._occurrence(users)
            if self.eval_negatives == "popularity":
                problem = self.sampled_shortfall(num_negatives)
                if problem is not None:
                    raise DataError(problem)
            negatives = np.zeros((len(users), int(num_negatives)), np.int64)
            for k in range(int(occurrence.max(initial=-1)) + 1):
                rows = np.flatnonzero(occurrence == k)
                stream = _STREAM_SAMPLED[stage] + k
                if self.eval_negatives == "uniform":
                    negatives[rows] = _engine.sample_unseen(ds.indptr, ds.items, ds.num_items, users[rows],
                                                            int(num_negatives), int(seed), stream)
                else:
                    negatives[rows] = _popular_unseen(ds, self._eval_weights(), users[rows], int(num_negatives),
                                                      int(seed), STREAM_EVAL_POPULARITY + stream)
            target = ds.items[ds.indptr[users] + prefix]
            self._candidates[key] = np.concatenate([target[:, None], negatives], axis=1)
        return self._candidates[key]

    def _eval_weights(self) -> np.ndarray:
        return PopularityNegatives(self.train_item_counts()).q

    def sampled_shortfall(self, num_negatives: int = 99) -> str | None:
        """Why :meth:`sampled_candidates` cannot draw ``num_negatives`` for every
        evaluated user, or None when it can (without drawing them)."""
        ds = self.dataset
        if self.eval_negatives == "uniform" and (
                len(self.eval_users) == 0 or self._lengths[self.eval_users].max() <= ds.num_items - int(num_negatives)):
            return None  # no user has seen more items than its length: none falls short
        allowed = np.ones(ds.num_items + 1, bool)
        allowed[0] = False
        what = "unseen items"
        if self.eval_negatives == "popularity":
            allowed = self._eval_weights() > 0
            what = "unseen items with a training count"
        owner = np.repeat(np.arange(ds.num_users, dtype=np.int64), self._lengths)
        pairs = np.unique(owner * (ds.num_items + 1) + ds.items)
        pairs = pairs[allowed[pairs % (ds.num_items + 1)]]
        seen_allowed = np.bincount(pairs // (ds.num_items + 1), minlength=ds.num_users)
        free = int(allowed.sum()) - seen_allowed[self.eval_users]
        short = np.flatnonzero(free < int(num_negatives))
        if len(short) == 0:
            return None
        user = int(self.eval_users[short[0]])
        return (f"user {user} has only {int(free[short[0]])} {what}, fewer than the {num_negatives} negatives "
                f"asked for ({len(short)} of {len(self.eval_users)} evaluated users fall short; catalogue of "
                f"{ds.num_items} items)")

    def save_candidates(self, path, stage: str, num_negatives: int = 99, seed: int = 0) -> None:
        """Write the sampled candidates (with their users) to an ``.npz`` file."""
        from ..utils import atomic_write

        cand = self.sampled_candidates(stage, num_negatives, seed)
        with atomic_write(path, "wb") as fh:
            np.savez(fh, users=self.instances(stage)[0], candidates=cand, seed=seed, stage=stage,
                     negatives=self.eval_negatives)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset.name!r}: {self.info.name})"


def build_train_batch(split, users: np.ndarray, *, seed: int, epoch: int, num_negatives: int = 1,
                      negatives="uniform", with_log_q: bool = False) -> TrainBatch:
    """Training rows of ``users`` for a :class:`PrefixSplit` (a
    :class:`~seqrec.data.LeaveOneOutSplit` is one): the C++ engine lays out inputs and
    targets (and draws uniform negatives); other samplers fill ``negative_ids`` afterwards.

    ``with_log_q``: also put ``log(m q(i))`` of every negative (its log expected count
    among the position's m draws, :meth:`NegativeSampler.log_expected_count`) into
    ``features["negative_log_q"]``, shaped as ``negative_ids``: what a sampled softmax
    subtracts (:func:`seqrec.models.losses.sampled_softmax_loss`)."""
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    sampler = make_sampler(negatives, split)
    users = np.ascontiguousarray(users, dtype=np.int64)
    prefix = split.train_prefix(users)
    ds = split.dataset
    engine_count = sampler.engine_count(num_negatives)
    inp, tgt, neg, lengths = _engine.train_batch(
        ds.indptr, ds.items, ds.num_items, users, np.ascontiguousarray(prefix, np.int64), split.max_len,
        engine_count, int(seed), _STREAM_TRAIN + int(epoch))
    if isinstance(sampler, MixedNegatives):
        neg = sampler.sample(users, tgt, num_negatives, seed=seed, epoch=epoch, drawn=neg)
    elif not sampler.engine_draws:
        neg = sampler.sample(users, tgt, num_negatives, seed=seed, epoch=epoch)
    negatives_t = torch.from_numpy(neg)
    if num_negatives == 1:
        negatives_t = negatives_t.squeeze(-1)
    users_t, tgt_t = torch.from_numpy(users.copy()), torch.from_numpy(tgt)
    features = {}
    if with_log_q:
        features[NEGATIVE_LOG_Q] = sampler.log_expected_count(negatives_t, num_negatives, users_t, tgt_t)
    return TrainBatch(users_t, torch.from_numpy(inp), tgt_t, negatives_t, torch.from_numpy(lengths),
                      **({"features": features} if features else {}))


def _popular_unseen(ds: SequenceDataset, q: np.ndarray, users: np.ndarray, n: int, seed: int,
                    stream: int) -> np.ndarray:
    """``[U, n]`` distinct items per user, none in the user's sequence, drawn one after
    another with probability proportional to ``q`` among the items still allowed
    (successive sampling without replacement): the first ``n`` allowed draws of a
    counter-based stream of popularity draws per user."""
    cdf = np.cumsum(q[1:])
    total = cdf[-1]
    out = np.zeros((len(users), n), np.int64)
    if len(users) == 0 or n == 0:
        return out
    stride = ds.num_items + 1
    owner = np.repeat(np.arange(ds.num_users, dtype=np.int64), ds.lengths)
    seen = np.unique(owner * stride + ds.items)  # (user, item) pairs, sorted

    def in_history(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        key = rows * stride + items
        pos = np.minimum(np.searchsorted(seen, key), len(seen) - 1)
        return seen[pos] == key

    width = 2 * n + 16
    todo = np.arange(len(users))
    while len(todo) and width <= 4096 + 8 * n:
        rows = users[todo][:, None]
        u = counter_uniform(seed, stream, rows, np.arange(width, dtype=np.int64)[None, :])
        cand = np.minimum(np.searchsorted(cdf, u * total, side="right"), len(cdf) - 1) + 1
        ok = ~in_history(rows, cand)
        # A repeat of an earlier draw of the same row is no new item.
        order = np.argsort(cand, axis=1, kind="stable")
        sorted_cand = np.take_along_axis(cand, order, 1)
        repeat_sorted = np.zeros_like(ok)
        repeat_sorted[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
        repeat = np.zeros_like(ok)
        np.put_along_axis(repeat, order, repeat_sorted, 1)
        ok &= ~repeat
        done = ok.sum(1) >= n
        first = np.argsort(~ok[done], axis=1, kind="stable")[:, :n]
        out[todo[done]] = np.take_along_axis(cand[done], first, 1)
        todo = todo[~done]
        width *= 2
    # Users whose allowed items carry little mass: the same distribution exactly, by
    # Gumbel top-n over the whole catalogue (log q + Gumbel noise, best first).
    items = np.arange(1, stride, dtype=np.int64)
    with np.errstate(divide="ignore"):
        log_q = np.log(q[1:])
    for t in todo:
        g = -np.log(-np.log(np.maximum(counter_uniform(seed, stream + 1, users[t], items), 1e-300)))
        key = np.where(in_history(np.full(len(items), users[t]), items), -np.inf, log_q + g)
        best = np.argsort(-key, kind="stable")[:n]
        if not np.all(np.isfinite(key[best])):
            raise DataError(f"user {users[t]}: fewer than {n} unseen items with a training count")
        out[t] = items[best]
    return out


# ---------------------------------------------------------------------- the splits
class LeaveOneOut(PrefixSplit):
    """Leave-one-out split of a :class:`SequenceDataset` (also named
    :class:`~seqrec.data.LeaveOneOutSplit`; ``dataset.leave_one_out(max_len)``).

    For a user with items ``x_1..x_T``: test target ``x_T`` (input ``x_1..x_{T-1}``), valid
    target ``x_{T-1}`` (input ``x_1..x_{T-2}``), training pairs ``(x_t -> x_{t+1})`` for
    ``t < T-2``. Users with fewer than 3 items are neither trained on nor evaluated
    (their items still count as history). Inputs keep the most recent ``max_len`` items.
    Sampled-protocol negatives: uniform (default) or ``eval_negatives="popularity"``.
    """

    def __init__(self, dataset: SequenceDataset, max_len: int = 50, *, eval_negatives: str = "uniform"):
        lengths = dataset.lengths
        users = np.flatnonzero(lengths >= 3).astype(np.int64)
        if len(users) == 0:
            raise DataError(f"{dataset.name}: no user has the 3 interactions leave-one-out needs")
        prefix = np.where(lengths >= 3, lengths - 2, 0)
        card = SplitCard("leave-one-out", "test = last item, valid = second last, train = every next item of the rest",
                         _check_max_len(max_len), "users with at least 3 interactions", eval_negatives)
        super().__init__(dataset, prefix, {"valid": (users, lengths[users] - 2), "test": (users, lengths[users] - 1)},
                         card, lengths)


def _timestamps(dataset: SequenceDataset, timestamps) -> np.ndarray:
    ts = dataset.timestamps if timestamps is None else np.asarray(timestamps, np.float64)
    if ts is None:
        raise DataError(f"{dataset.name}: a temporal split needs timestamps; the dataset has none "
                        "(load it with timestamps, or pass timestamps=[one per interaction, in dataset.items order])")
    if ts.shape != dataset.items.shape:
        raise DataError(f"{dataset.name}: timestamps has shape {ts.shape}, dataset.items {dataset.items.shape}")
    if not np.all(np.isfinite(ts)):
        raise DataError(f"{dataset.name}: timestamps[{int(np.flatnonzero(~np.isfinite(ts))[0])}] is not finite")
    return ts


class TemporalSplit(PrefixSplit):
    """Global temporal split: one time line for every user, nothing at or after ``cut``
    is trained on.

    * **Training**: every interaction with time ``< cut`` (for each user a prefix of
      its sequence, since sequences are in time order).
    * **One cut** (``test_cut=None``): for each user with at least one interaction
      before ``cut`` and at least two at or after it, valid target = its first
      interaction at or after ``cut``, test target = its second (whose input includes
      the valid target).
    * **Two cuts** (``cut < test_cut``): valid target = a user's first interaction in
      ``[cut, test_cut)`` (for users with one there and one before ``cut``); test target
      = its first interaction at or after ``test_cut`` (for users with one before
      ``test_cut``); the valid and test users may differ. Training still stops at
      ``cut``.

    Inputs are every earlier interaction of the user (the most recent ``max_len``):
    the past that exists at prediction time, never anything after the target. An
    interaction exactly at a cut counts as after it.

    Args:
        dataset: a dataset with ``timestamps`` (or pass ``timestamps``, one per
            interaction in ``dataset.items`` order).
        cut, test_cut: times in the unit of the timestamps; see :meth:`at_quantiles`.
        eval_negatives: 'uniform' or 'popularity' (sampled protocol negatives).
    """

    def __init__(self, dataset: SequenceDataset, cut: float, test_cut: float | None = None, *, max_len: int = 50,
                 timestamps=None, eval_negatives: str = "uniform"):
        ts = _timestamps(dataset, timestamps)
        cut = float(cut)
        for name, value in (("cut", cut), ("test_cut", test_cut)):
            if value is not None and not np.isfinite(float(value)):
                raise ValueError(f"{name} must be a finite time, got {value}")
        if test_cut is not None and not float(test_cut) > cut:
            raise ValueError(f"test_cut ({test_cut}) must be later than cut ({cut})")
        owner = np.repeat(np.arange(dataset.num_users, dtype=np.int64), dataset.lengths)
        lengths = dataset.lengths

        def before(t: float) -> np.ndarray:  # per user: interactions earlier than t
            return np.bincount(owner[ts < t], minlength=dataset.num_users).astype(np.int64)

        train = before(cut)
        if test_cut is None:
            users = np.flatnonzero((train >= 1) & (lengths - train >= 2))
            instances = {"valid": (users, train[users]), "test": (users, train[users] + 1)}
            rule = (f"train = interactions before t={cut:g}; valid = each user's 1st interaction at/after it, "
                    "test = the 2nd")
            name = f"temporal (cut t={cut:g})"
            evaluated = "users with >= 1 interaction before the cut and >= 2 after"
        else:
            test_cut = float(test_cut)
            second = before(test_cut)
            valid_users = np.flatnonzero((train >= 1) & (second > train))
            test_users = np.flatnonzero((second >= 1) & (lengths > second))
            instances = {"valid": (valid_users, train[valid_users]), "test": (test_users, second[test_users])}
            rule = (f"train = interactions before t={cut:g}; valid = each user's 1st interaction in "
                    f"[{cut:g}, {test_cut:g}); test = the 1st at/after t={test_cut:g}")
            name = f"temporal (cuts t={cut:g}, {test_cut:g})"
            evaluated = "valid: users with history before the 1st cut; test: users with history before the 2nd"
        card = SplitCard(name, rule + "; inputs = all earlier interactions", _check_max_len(max_len), evaluated,
                         eval_negatives)
        self.cut, self.test_cut, self.timestamps = cut, test_cut, ts
        super().__init__(dataset, train, instances, card)

    @classmethod
    def at_quantiles(cls, dataset: SequenceDataset, cut: float = 0.8, test_cut: float | None = None,
                     **kwargs) -> "TemporalSplit":
        """Cuts at quantiles of all interaction times (e.g. 0.8 and 0.9)."""
        ts = _timestamps(dataset, kwargs.get("timestamps"))
        for q in (cut, test_cut):
            if q is not None and not 0 < q < 1:
                raise ValueError(f"quantiles must lie in (0, 1), got {q}")
        return cls(dataset, float(np.quantile(ts, cut)),
                   None if test_cut is None else float(np.quantile(ts, test_cut)), **kwargs)


class RatioSplit(PrefixSplit):
    """Per-user chronological ratio split, e.g. ``ratios=(0.8, 0.1, 0.1)``.

    A user with T interactions gets ``n_test = max(1, floor(T * r_test))`` test items
    (the last ones), ``n_valid = max(1, floor(T * r_valid))`` valid items before them,
    and trains on the first ``T - n_valid - n_test``; users left with no training item
    are not evaluated (their items are nobody's training data). EVERY valid (test) item
    is an evaluation instance whose input is all of the user's items before it, so
    metrics average over instances, and a user with more test items weighs more.
    """

    def __init__(self, dataset: SequenceDataset, ratios=(0.8, 0.1, 0.1), *, max_len: int = 50,
                 eval_negatives: str = "uniform"):
        ratios = tuple(float(r) for r in ratios)
        if len(ratios) != 3 or not all(np.isfinite(ratios)) or min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(f"ratios must be three positive (train, valid, test) shares summing to 1, got {ratios}")
        lengths = dataset.lengths
        # The epsilon keeps 0.29 * 100 at 29 despite binary floating point.
        n_test = np.maximum(1, np.floor(lengths * ratios[2] + 1e-9)).astype(np.int64)
        n_valid = np.maximum(1, np.floor(lengths * ratios[1] + 1e-9)).astype(np.int64)
        n_train = lengths - n_valid - n_test
        evaluated = n_train >= 1
        train = np.where(evaluated, n_train, 0)

        def spread(first: np.ndarray, count: np.ndarray):
            users = np.flatnonzero(evaluated)
            rep = np.repeat(users, count[users])
            starts = np.repeat(first[users], count[users])
            offsets = np.arange(len(rep)) - np.repeat(np.cumsum(count[users]) - count[users], count[users])
            return rep, starts + offsets

        card = SplitCard(f"ratio {ratios[0]:g}/{ratios[1]:g}/{ratios[2]:g} (per user, chronological)",
                         "per user: first share trains, then valid, then test (floors, >= 1 valid and test item); "
                         "every valid/test item is an instance with all earlier items as input",
                         _check_max_len(max_len), "users with >= 1 training item (all their valid/test items)",
                         eval_negatives)
        self.ratios = ratios
        super().__init__(dataset, train, {"valid": spread(n_train, n_valid), "test": spread(n_train + n_valid, n_test)},
                         card)
