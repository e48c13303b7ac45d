"""seqrec.models: thin ``nn.Module`` models and the Transformer layers they share."""
from __future__ import annotations

from .dss import DSS, DSSConfig, DSSEncoding
from .layers import (
    FeedForward,
    ItemPositionEmbedding,
    MultiHeadSelfAttention,
    TransformerBlock,
    TransformerEncoder,
    init_transformer_weights,
    padding_mask,
    scaled_dot_attention,
)
from .registry import available_models, build_model
from .sasrec import SASRec, SASRecConfig
from .sine import SINE, SINEConfig

__all__ = [
    "DSS",
    "DSSConfig",
    "DSSEncoding",
    "FeedForward",
    "ItemPositionEmbedding",
    "MultiHeadSelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "init_transformer_weights",
    "padding_mask",
    "scaled_dot_attention",
    "SASRec",
    "SASRecConfig",
    "SINE",
    "SINEConfig",
    "available_models",
    "build_model",
]
