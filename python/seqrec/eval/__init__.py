"""seqrec.eval: ranking metrics and evaluation protocols.

Full ranking and sampled ranking run in user chunks on the ``rank_topk`` /
``rank_sampled`` operators; metrics are HR@K (= Recall@K for one target), NDCG@K
and MRR, with ties counting against the model; Precision@K, MAP@K, Coverage@K and
Gini@K on request (``metrics=``). Report every result with its :class:`Protocol`.
Block sizes under a memory budget: :mod:`seqrec.eval.memory`; users sharded over
``torch.distributed`` ranks with an exact merge: :mod:`seqrec.eval.distributed`.
"""
from __future__ import annotations

from .metrics import EXTRA_METRICS, RankAccumulator, TopKAccumulator, metric_names, metrics_from_ranks
from .ranking import Protocol, evaluate_full_ranking, evaluate_sampled

__all__ = [
    "EXTRA_METRICS",
    "Protocol",
    "TopKAccumulator",
    "RankAccumulator",
    "evaluate_full_ranking",
    "evaluate_sampled",
    "metric_names",
    "metrics_from_ranks",
]
