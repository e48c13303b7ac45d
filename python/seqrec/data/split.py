"""Training and evaluation batch types, the split card, and ``LeaveOneOutSplit``: the
name :meth:`SequenceDataset.leave_one_out` returns for
:class:`seqrec.data.splits.LeaveOneOut` (the same class)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch

# Streams keep the random draws of different purposes independent for one seed.
_STREAM_SAMPLED = {"valid": 1 << 40, "test": 2 << 40}
_STREAM_TRAIN = 3 << 40


class _NoFeatures(dict):
    """The default ``TrainBatch.features``: empty, read-only (one object shared by every
    batch), and picklable (batches cross DataLoader worker processes)."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("TrainBatch.features defaults to a shared read-only mapping; build the batch with "
                        "features={...} (or batch._replace(features=...)) to add features")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _read_only

    def __reduce__(self):
        return (_NoFeatures, ())


_NO_FEATURES = _NoFeatures()


class TrainBatch(NamedTuple):
    """One training batch; every tensor is int64, sequences LEFT-padded with 0.

    users: ``[B]`` dense user ids. input_ids: ``[B, n]`` items. target_ids: ``[B, n]``
    the next item at every position (0 at padding). negative_ids: ``[B, n]`` one
    negative per position (``[B, n, k]`` when k > 1 negatives were asked for; 0 at
    padding). lengths: ``[B]`` number of real positions (models build their padding
    masks from it). features: per-position side features, see below.
    """

    users: torch.Tensor
    input_ids: torch.Tensor
    target_ids: torch.Tensor
    negative_ids: torch.Tensor
    lengths: torch.Tensor
    #: Per-position side features gathered by the data side, ``name -> [B, n, ...]``
    #: tensors aligned with ``input_ids`` (empty when the data side gathers none).
    #: The default is a shared read-only empty mapping: build a new dict to add features.
    features: Mapping[str, torch.Tensor] = _NO_FEATURES

    def to(self, device) -> "TrainBatch":
        tensors = (None if t is None else t.to(device, non_blocking=True) for t in self[:-1])
        features = {k: v.to(device, non_blocking=True) for k, v in self.features.items()}
        return TrainBatch(*tensors, features=features)


class EvalBatch(NamedTuple):
    """Evaluation inputs for a set of users.

    users ``[U]``; input_ids ``[U, n]`` (the last n items before the target, LEFT-padded);
    lengths ``[U]``; target ``[U]``; history_indptr ``[U + 1]`` / history_items: the
    whole prefix before the target, untruncated (the items excluded from full ranking).
    """

    users: torch.Tensor
    input_ids: torch.Tensor
    lengths: torch.Tensor
    target: torch.Tensor
    history_indptr: torch.Tensor
    history_items: torch.Tensor


@dataclass(frozen=True)
class SplitInfo:
    """What the split is, for every printed or saved result."""

    name: str = "leave-one-out"
    rule: str = "test = last item, valid = second last, train = every next item of the rest"
    max_len: int = 50
    eval_users: str = "users with at least 3 interactions"


def __getattr__(name: str):
    # LeaveOneOutSplit is seqrec.data.splits.LeaveOneOut, the one leave-one-out
    # implementation; looked up on first use because .splits builds on this module's
    # batch types (an import at the top would be circular).
    if name == "LeaveOneOutSplit":
        from .splits import LeaveOneOut

        return LeaveOneOut
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
