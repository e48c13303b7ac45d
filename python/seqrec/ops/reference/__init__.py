"""Plain-PyTorch references of every seqrec operator.

Same signatures and semantics as the compiled operators in ``seqrec.ops``; slow but
obviously correct. Tests compare the kernels against them, benchmarks measure against
them, and ``backend="reference"`` runs whole models on them.
"""
from __future__ import annotations

from .intent_cluster import intent_cluster
from .dif_attention import dif_attention
from .dropout import dropout
from .rank_topk import rank_sampled, rank_topk
from .seq_mask import seq_mask

__all__ = ["dif_attention", "dropout", "intent_cluster", "rank_sampled", "rank_topk", "seq_mask"]
