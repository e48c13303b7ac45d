"""seqrec operators: thin typed wrappers over ``torch.ops.seqrec.*``.

Each operator module registers its fake kernel (for ``torch.compile``) and its
autograd formula; ``seqrec.ops.reference`` holds a plain-PyTorch version of every
operator with the same signature, selectable with ``backend="reference"``.
"""
from __future__ import annotations

from .backend import get_backend, set_backend, use_backend
from .intent_cluster import intent_cluster
from .dif_attention import dif_attention, init_fusion_params
from .dropout import dropout
from .rank_topk import rank_sampled, rank_topk
from .seq_mask import SeqMaskOutput, seq_mask

__all__ = [
    "get_backend", "set_backend", "use_backend", "dif_attention", "dropout", "init_fusion_params", "intent_cluster",
    "rank_sampled", "rank_topk", "SeqMaskOutput", "seq_mask",
]
