"""Non-learned baselines, evaluated with the same protocol as the models."""
from __future__ import annotations

import numpy as np
import torch

from ..data.split import LeaveOneOutSplit
from .metrics import metrics_from_ranks
from .ranking import Protocol, evaluate_full_ranking


def numpy_full_ranking_ranks(scores: np.ndarray, target: np.ndarray, history_indptr: np.ndarray,
                             history_items: np.ndarray, exclude_history: bool = True) -> np.ndarray:
    """Plain NumPy ranks under seqrec's rules: padding column 0 never ranked, history
    items excluded except the target, ties counted against the model."""
    ranks = np.empty(len(target), np.int64)
    for u in range(len(target)):
        row = scores[u].astype(np.float64).copy()
        row[0] = -np.inf
        if exclude_history:
            hist = history_items[history_indptr[u]:history_indptr[u + 1]]
            row[hist[hist != target[u]]] = -np.inf
        t = row[target[u]]
        candidates = np.isfinite(row)
        candidates[target[u]] = False
        ranks[u] = int(np.count_nonzero(row[candidates] >= t))
    return ranks


def popularity_baseline(split: LeaveOneOutSplit, ks=(5, 10, 20), chunk_size: int = 4096,
                        reference: bool = True) -> dict:
    """Score every item by its number of training interactions (the items before each
    user's valid and test targets) and evaluate on test, full ranking, with
    ``rank_topk`` and (``reference=True``) with the NumPy reference above, a check that
    both rank alike (``metrics["NumPy reference"]``, ``ranks_equal``)."""
    ds = split.dataset
    lengths = ds.lengths
    keep = np.ones(ds.num_interactions, bool)
    long_enough = np.flatnonzero(lengths >= 3)
    keep[ds.indptr[long_enough + 1] - 1] = False  # test targets
    keep[ds.indptr[long_enough + 1] - 2] = False  # valid targets
    popularity = torch.from_numpy(np.bincount(ds.items[keep], minlength=ds.num_items + 1).astype(np.float32))
    batch = split.eval_batch("test")

    def score_fn(rows: torch.Tensor) -> torch.Tensor:
        return popularity.expand(len(rows), -1)

    metrics, ranks = evaluate_full_ranking(score_fn, batch.target, batch.history_indptr, batch.history_items,
                                           ks=ks, chunk_size=chunk_size)
    protocol = Protocol(ranking="full", max_len=split.max_len).describe()
    if not reference:
        return {"metrics": {"rank_topk": metrics}, "protocol": protocol}
    ref = numpy_full_ranking_ranks(np.broadcast_to(popularity.numpy(), (len(batch.target), ds.num_items + 1)),
                                   batch.target.numpy(), batch.history_indptr.numpy(), batch.history_items.numpy())
    return {"metrics": {"rank_topk": metrics, "NumPy reference": metrics_from_ranks(ref, ks)},
            "ranks_equal": bool(np.array_equal(ranks.numpy(), ref)), "protocol": protocol}
