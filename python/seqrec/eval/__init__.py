"""seqrec.eval: ranking metrics and evaluation protocols.

Full ranking and sampled ranking run in user chunks on the ``rank_topk`` /
``rank_sampled`` operators; metrics are HR@K (= Recall@K for one target), NDCG@K
and MRR, with ties counting against the model. Report every result with its
:class:`Protocol`.
"""
from __future__ import annotations

from .metrics import RankAccumulator, metric_names, metrics_from_ranks
from .ranking import Protocol, evaluate_full_ranking, evaluate_sampled

__all__ = [
    "Protocol",
    "RankAccumulator",
    "evaluate_full_ranking",
    "evaluate_sampled",
    "metric_names",
    "metrics_from_ranks",
]
