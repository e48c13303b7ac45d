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

__all__ = ["AttributeField", "DataError", "EvalBatch", "LeaveOneOutSplit", "SequenceDataset", "TrainBatch",
           "load_dataset", "synthetic"]
