"""Ranking metrics from 0-based target ranks (one target per user).

For a user whose target has 0-based rank r (r candidates ranked above it, ties
counting against the model, see :func:`seqrec.ops.rank_topk`):

* ``HR@K`` = 1 if r < K else 0. With a single target it equals Recall@K.
* ``NDCG@K`` = 1 / log2(r + 2) if r < K else 0 (the ideal DCG of one target is 1).
* ``MRR`` = 1 / (r + 1), over the full ranking (no cut-off).

Each is averaged over users. The metrics are computed from a histogram of the ranks
(integer counts), so they are exactly the same however the users were split into
chunks or batches, bit for bit.

Opt-in metrics (``extra=``, see :data:`EXTRA_METRICS`), from the same single ranking pass:

* ``Precision@K`` = (1 if r < K else 0) / K: the share of the K recommended items
  that are relevant (one relevant item per user).
* ``MAP@K``: average precision at K, which for one relevant item is 1 / (r + 1) if
  r < K else 0 (MRR cut at K).
* ``Coverage@K`` (full ranking only): the share of the catalogue's items (1..I) that
  appear in at least one user's top-K list.
* ``Gini@K`` (full ranking only): the Gini coefficient of how often each catalogue item
  appears in the top-K lists (over all I items, zeros included): 0 when every item is
  recommended equally often, towards 1 when a few items take every slot. With
  ``x_(1) <= ... <= x_(I)`` the sorted counts,
  ``Gini = (2 * sum_i i * x_(i)) / (I * sum_i x_i) - (I + 1) / I``.

Precision and MAP come from the rank histogram; Coverage and Gini from integer counts
of the items in the top-K lists (:class:`TopKAccumulator`), so all of them are
independent of the chunk size, bit for bit.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["metrics_from_ranks", "RankAccumulator", "TopKAccumulator", "metric_names", "EXTRA_METRICS"]

#: Opt-in metric families; "Coverage" and "Gini" need top-K lists (full ranking).
EXTRA_METRICS = ("Precision", "MAP", "Coverage", "Gini")
RANK_METRICS = ("Precision", "MAP")
LIST_METRICS = ("Coverage", "Gini")


def _check_extra(extra: Iterable[str]) -> tuple[str, ...]:
    if isinstance(extra, str):
        extra = (extra,)
    extra = tuple(extra)
    unknown = [e for e in extra if e not in EXTRA_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; the opt-in metrics are {list(EXTRA_METRICS)}")
    return tuple(e for e in EXTRA_METRICS if e in extra)  # canonical order, no duplicates


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return tuple(int(k) for k in ks)


def metric_names(ks: Sequence[int] = (5, 10, 20), extra: Iterable[str] = ()) -> list[str]:
    """Keys of the metric dict, in order: HR@K, NDCG@K for each K, then MRR, then each
    opt-in family of ``extra`` (in :data:`EXTRA_METRICS` order) for each K."""
    ks = _check_ks(ks)
    names = []
    for k in ks:
        names += [f"HR@{k}", f"NDCG@{k}"]
    return names + ["MRR"] + [f"{name}@{k}" for name in _check_extra(extra) for k in ks]


def _as_rank_array(rank: Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    if isinstance(rank, Tensor):
        if rank.dtype.is_floating_point or rank.dtype.is_complex or rank.dtype == torch.bool:
            raise ValueError(f"rank must hold integers, got dtype {rank.dtype}")
        arr = rank.detach().to("cpu").numpy()
    else:
        arr = np.asarray(rank)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"rank must hold integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1).astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"rank must be >= 0 (0-based ranks), got {int(arr.min())}")
    return arr


def _metrics_from_histogram(hist: np.ndarray, ks: tuple[int, ...], extra: tuple[str, ...] = ()) -> dict[str, float]:
    n = int(hist.sum())
    if n == 0:
        raise ValueError("no ranks to average: evaluate at least one user")
    # Trailing zeros would change numpy's pairwise summation blocks, not the sum's
    # terms; trim them so every caller sums exactly the same array.
    nonzero = np.flatnonzero(hist)
    hist = hist[: nonzero[-1] + 1].astype(np.float64)
    # The same terms as hist / (r + 1) and hist[:k] / log2(r + 2) for r = 0, 1, ..., but
    # with two arrays as long as the histogram instead of six (it is as long as the
    # catalogue: 8 MB per array at 10^6 items).
    def head(k: int) -> np.ndarray:  # r = 0 .. min(k, len) - 1
        return np.arange(min(k, hist.shape[0]), dtype=np.float64)

    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(hist[:k].sum() / n)
        out[f"NDCG@{k}"] = float((hist[:k] * (1.0 / np.log2(head(k) + 2.0))).sum() / n)
    reciprocal = np.arange(hist.shape[0], dtype=np.float64)
    reciprocal += 1.0
    np.divide(hist, reciprocal, out=reciprocal)
    out["MRR"] = float(reciprocal.sum() / n)
    del reciprocal
    if "Precision" in extra:
        for k in ks:
            out[f"Precision@{k}"] = float(hist[:k].sum() / (n * k))
    if "MAP" in extra:
        for k in ks:
            out[f"MAP@{k}"] = float((hist[:k] / (head(k) + 1.0)).sum() / n)
    return out


def metrics_from_ranks(rank: Tensor | np.ndarray, ks: Sequence[int] = (5, 10, 20),
                       extra: Iterable[str] = ()) -> dict[str, float]:
    """HR@K, NDCG@K (for each K in ``ks``) and MRR averaged over 0-based ``rank``.

    Args:
        rank: [U] integer ranks (Tensor, ndarray or sequence), >= 0.
        ks: cut-offs, positive ints.
        extra: opt-in rank metrics, any of "Precision", "MAP" (Coverage and Gini need
            the top-K lists: :class:`TopKAccumulator`).

    Returns:
        dict with keys ``HR@K``, ``NDCG@K`` for each K, then ``MRR``, then
        ``Precision@K`` / ``MAP@K`` when asked for (Python floats).
    """
    ks = _check_ks(ks)
    extra = _check_extra(extra)
    lists = [e for e in extra if e in LIST_METRICS]
    if lists:
        raise ValueError(f"{lists} need the top-K lists, not only ranks: use TopKAccumulator")
    arr = _as_rank_array(rank)
    return _metrics_from_histogram(np.bincount(arr), ks, extra)


class RankAccumulator:
    """Collects per-chunk ranks; ``compute()`` gives the metrics of all of them.

    Only a histogram of the ranks is kept (O(max rank) integers), so the result is
    identical to ``metrics_from_ranks`` on the concatenated ranks whatever the chunking.
    """

    def __init__(self, ks: Sequence[int] = (5, 10, 20), extra: Iterable[str] = ()):
        self.ks = _check_ks(ks)
        self.extra = tuple(e for e in _check_extra(extra) if e in RANK_METRICS)
        self._hist = np.zeros(0, dtype=np.int64)

    @property
    def count(self) -> int:
        """Number of ranks added so far."""
        return int(self._hist.sum())

    def add(self, rank: Tensor | np.ndarray) -> None:
        """Add a chunk of 0-based ranks ([chunk] integers)."""
        arr = _as_rank_array(rank)
        if arr.size == 0:
            return
        top = int(arr.max()) + 1
        if top > self._hist.shape[0]:
            self._grow(top)
        np.add.at(self._hist, arr, 1)  # no [max rank] bincount for every chunk

    def histogram(self) -> np.ndarray:
        """A copy of the counts: ``histogram()[r]`` users had rank r (int64)."""
        return self._hist.copy()

    def add_histogram(self, counts: np.ndarray | Tensor) -> None:
        """Add rank counts (``counts[r]`` more users of rank r), e.g. another
        accumulator's :meth:`histogram` or a sum of them across processes: merging
        histograms gives exactly the metrics of all the ranks together."""
        counts = counts.detach().cpu().numpy() if isinstance(counts, Tensor) else np.asarray(counts)
        if counts.ndim != 1 or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
            raise ValueError(f"counts must be a 1-dimensional integer array, got shape {counts.shape}, "
                             f"dtype {counts.dtype}")
        if counts.size and counts.min() < 0:
            raise ValueError(f"counts must be >= 0, got {int(counts.min())}")
        counts = counts.astype(np.int64, copy=False)
        if counts.shape[0] > self._hist.shape[0]:
            self._grow(counts.shape[0])
        self._hist[: counts.shape[0]] += counts

    def _grow(self, length: int) -> None:
        grown = np.zeros(length, dtype=np.int64)
        grown[: self._hist.shape[0]] = self._hist
        self._hist = grown

    def compute(self) -> dict[str, float]:
        """The metrics (keys as :func:`metrics_from_ranks`) over every rank added."""
        return _metrics_from_histogram(self._hist, self.ks, self.extra)

    def reset(self) -> None:
        self._hist = np.zeros(0, dtype=np.int64)


class TopKAccumulator:
    """Counts how often each item appears in the users' top-K lists, chunk by chunk;
    ``compute()`` gives ``Coverage@K`` and ``Gini@K`` (module docstring).

    Args:
        ks: cut-offs; every list added must have at least ``max(ks)`` columns.
        num_items: catalogue size I (items 1..I; 0, the padding of short lists, is
            not an item).
        extra: which of "Coverage", "Gini" to compute (default both).
    """

    def __init__(self, ks: Sequence[int], num_items: int, extra: Iterable[str] = LIST_METRICS):
        self.ks = _check_ks(ks)
        if int(num_items) < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = int(num_items)
        self.extra = tuple(e for e in _check_extra(extra) if e in LIST_METRICS)
        self._counts = np.zeros((len(self.ks), self.num_items + 1), np.int64)

    def add(self, topk_items: Tensor | np.ndarray) -> None:
        """Add a chunk of top lists, ``[chunk, >= max(ks)]`` item ids (0 = no item)."""
        top = topk_items.detach().cpu().numpy() if isinstance(topk_items, Tensor) else np.asarray(topk_items)
        if top.ndim != 2 or top.shape[1] < max(self.ks):
            raise ValueError(f"topk_items must be [users, >= {max(self.ks)}], got shape {top.shape}")
        if top.size and (top.min() < 0 or top.max() > self.num_items):
            raise ValueError(f"topk_items must hold item ids in 0..{self.num_items}")
        for row, k in enumerate(self.ks):
            self._counts[row] += np.bincount(top[:, :k].reshape(-1), minlength=self.num_items + 1)

    def counts(self, k: int) -> np.ndarray:
        """``[num_items + 1]`` how many top-``k`` lists hold each item (index 0 unused)."""
        return self._counts[self.ks.index(k)].copy()

    def all_counts(self) -> np.ndarray:
        """A copy of every count, ``[len(ks), num_items + 1]`` int64 (for merging)."""
        return self._counts.copy()

    def add_counts(self, counts: np.ndarray | Tensor) -> None:
        """Add another accumulator's :meth:`all_counts` (or their sum across processes):
        integer sums, so merged metrics equal those of all the lists together."""
        counts = counts.detach().cpu().numpy() if isinstance(counts, Tensor) else np.asarray(counts)
        if counts.shape != self._counts.shape or (counts.size and not np.issubdtype(counts.dtype, np.integer)):
            raise ValueError(f"counts must be an integer array of shape {self._counts.shape}, got shape "
                             f"{counts.shape}, dtype {counts.dtype}")
        self._counts += counts.astype(np.int64, copy=False)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.extra:
            for row, k in enumerate(self.ks):
                x = self._counts[row, 1:]
                if name == "Coverage":
                    out[f"Coverage@{k}"] = float(np.count_nonzero(x) / self.num_items)
                else:
                    total = int(x.sum())
                    if total == 0:
                        out[f"Gini@{k}"] = 0.0
                        continue
                    i = np.arange(1, self.num_items + 1, dtype=np.int64)
                    # Integer sums: exact, whatever the chunking.
                    num = 2 * int((i * np.sort(x)).sum()) - (self.num_items + 1) * total
                    out[f"Gini@{k}"] = float(num / (self.num_items * total))
        return out

    def reset(self) -> None:
        self._counts[:] = 0
