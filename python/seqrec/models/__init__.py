"""seqrec.models: thin ``nn.Module`` models and the Transformer layers they share."""
from __future__ import annotations

from .base import LossOutput, SequentialRecommender
from .composed import ComposedConfig, ComposedRecommender, Objective
from .dss import DSS, DSSConfig, DSSEncoding
from .layers import (
    FeedForward,
    ItemPositionEmbedding,
    LengthGroups,
    MultiHeadSelfAttention,
    PackedPositions,
    TransformerBlock,
    TransformerEncoder,
    init_transformer_weights,
    lookup_rows,
    padding_mask,
    scaled_dot_attention,
)
from .pretrained import LoadReport, load_pretrained, read_pretrained_state
from .difsr import DIFSR, DIFSRConfig
from .registry import available_models, build_model
from .s3rec import S3Rec, S3RecConfig
from .sasrec import SASRec, SASRecConfig
from .sine import SINE, SINEConfig

__all__ = [
    "LossOutput",
    "SequentialRecommender",
    "ComposedConfig",
    "ComposedRecommender",
    "Objective",
    "DSS",
    "DSSConfig",
    "DSSEncoding",
    "FeedForward",
    "ItemPositionEmbedding",
    "LengthGroups",
    "MultiHeadSelfAttention",
    "PackedPositions",
    "TransformerBlock",
    "TransformerEncoder",
    "init_transformer_weights",
    "lookup_rows",
    "padding_mask",
    "scaled_dot_attention",
    "SASRec",
    "SASRecConfig",
    "SINE",
    "SINEConfig",
    "S3Rec",
    "S3RecConfig",
    "LoadReport",
    "load_pretrained",
    "read_pretrained_state",
    "DIFSR",
    "DIFSRConfig",
    "available_models",
    "build_model",
]
