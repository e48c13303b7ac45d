"""Ranking metrics from 0-based target ranks (one target per user).

For a user whose target has 0-based rank r (r candidates ranked above it, ties
counting against the model, see :func:`seqrec.ops.rank_topk`):

* ``HR@K`` = 1 if r < K else 0. With a single target it equals Recall@K.
* ``NDCG@K`` = 1 / log2(r + 2) if r < K else 0 (the ideal DCG of one target is 1).
* ``MRR`` = 1 / (r + 1), over the full ranking (no cut-off).

Each is averaged over users. The metrics are computed from a histogram of the ranks
(integer counts), so they are exactly the same however the users were split into
chunks or batches, bit for bit.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["metrics_from_ranks", "RankAccumulator", "metric_names"]


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return tuple(int(k) for k in ks)


def metric_names(ks: Sequence[int] = (5, 10, 20)) -> list[str]:
    """Keys of the metric dict, in order: HR@K, NDCG@K for each K, then MRR."""
    names = []
    for k in _check_ks(ks):
        names += [f"HR@{k}", f"NDCG@{k}"]
    return names + ["MRR"]


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


def _metrics_from_histogram(hist: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    n = int(hist.sum())
    if n == 0:
        raise ValueError("no ranks to average: evaluate at least one user")
    # Trailing zeros would change numpy's pairwise summation blocks, not the sum's
    # terms; trim them so every caller sums exactly the same array.
    nonzero = np.flatnonzero(hist)
    hist = hist[: nonzero[-1] + 1].astype(np.float64)
    r = np.arange(hist.shape[0], dtype=np.float64)
    gain = 1.0 / np.log2(r + 2.0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(hist[:k].sum() / n)
        out[f"NDCG@{k}"] = float((hist[:k] * gain[:k]).sum() / n)
    out["MRR"] = float((hist / (r + 1.0)).sum() / n)
    return out


def metrics_from_ranks(rank: Tensor | np.ndarray, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """HR@K, NDCG@K (for each K in ``ks``) and MRR averaged over 0-based ``rank``.

    Args:
        rank: [U] integer ranks (Tensor, ndarray or sequence), >= 0.
        ks: cut-offs, positive ints.

    Returns:
        dict with keys ``HR@K``, ``NDCG@K`` for each K, then ``MRR`` (Python floats).
    """
    ks = _check_ks(ks)
    arr = _as_rank_array(rank)
    return _metrics_from_histogram(np.bincount(arr), ks)


class RankAccumulator:
    """Collects per-chunk ranks; ``compute()`` gives the metrics of all of them.

    Only a histogram of the ranks is kept (O(max rank) integers), so the result is
    identical to ``metrics_from_ranks`` on the concatenated ranks whatever the chunking.
    """

    def __init__(self, ks: Sequence[int] = (5, 10, 20)):
        self.ks = _check_ks(ks)
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
        counts = np.bincount(arr)
        if counts.shape[0] > self._hist.shape[0]:
            grown = np.zeros(counts.shape[0], dtype=np.int64)
            grown[: self._hist.shape[0]] = self._hist
            self._hist = grown
        self._hist[: counts.shape[0]] += counts

    def compute(self) -> dict[str, float]:
        """The metrics (keys as :func:`metrics_from_ranks`) over every rank added."""
        return _metrics_from_histogram(self._hist, self.ks)

    def reset(self) -> None:
        self._hist = np.zeros(0, dtype=np.int64)
