"""Data: datasets, leave-one-out splits, batches, and the synthetic generator.

The heavy lifting (parsing, grouping, k-core, batching, sampling) runs in the C++ data
engine ``seqrec._C.data``; this package is its Python face.
"""
from __future__ import annotations

from .attributes import AttributeField
from .dataset import DataError, SequenceDataset
from .loaders import load_dataset
from .split import EvalBatch, LeaveOneOutSplit, TrainBatch
from .synthetic import synthetic
from .negatives import InBatchNegatives, NegativeSampler, PopularityNegatives, UniformNegatives
from .splits import LeaveOneOut, PrefixSplit, RatioSplit, SplitCard, TemporalSplit
from .torch_data import ShardedTrainBatches, TrainDataset, TrainItem, collate_train

__all__ = ["AttributeField", "DataError", "EvalBatch", "LeaveOneOutSplit", "SequenceDataset", "TrainBatch",
           "load_dataset", "synthetic",
           # splits, torch.utils.data faces and negative samplers
           "InBatchNegatives", "LeaveOneOut", "NegativeSampler", "PopularityNegatives", "PrefixSplit", "RatioSplit",
           "ShardedTrainBatches", "SplitCard", "TemporalSplit", "TrainDataset", "TrainItem", "UniformNegatives",
           "collate_train"]
