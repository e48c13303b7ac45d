"""Per-sample pure-Python reference of ``seq_mask`` (the authors' loop, our random streams).

It walks each sequence the way S3-Rec's ``PretrainDataset.__getitem__`` does (a uniform per
item, a rejection loop per negative, then the segment), but draws from the same splitmix64
streams as the C++ kernel (``csrc/ops/seq_mask/seq_mask.h``), so on any seed its output is
identical to the kernel's. Keep the two in sync: the stream layout below is the contract.
"""
from __future__ import annotations


import torch
from torch import Tensor

from .._checks import check_same_device
from .._random import seed_int64
from ..seq_mask import SeqMaskOutput

__all__ = ["seq_mask"]

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_PURPOSE_MASK, _PURPOSE_NEGATIVE, _PURPOSE_SEGMENT = 0, 1, 2
_MAX_NEGATIVE_TRIES = 32


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class _Stream:
    """splitmix64 from state mix64(mix64(seed) + GAMMA * (4 * row + purpose + 1))."""

    def __init__(self, seed: int, row: int, purpose: int) -> None:
        self.state = _mix64((_mix64(seed & _MASK64) + _GAMMA * (4 * row + purpose + 1)) & _MASK64)

    def next(self) -> int:
        self.state = (self.state + _GAMMA) & _MASK64
        return _mix64(self.state)

    def uniform01(self) -> float:
        return (self.next() >> 11) * 2.0**-53

    def below(self, m: int) -> int:
        return (self.next() * m) >> 64


def _check(item_seq, item_attributes, num_items, mask_token, mask_prob):
    if not isinstance(item_seq, Tensor) or item_seq.dtype != torch.int64 or item_seq.dim() != 2:
        raise RuntimeError("seq_mask: argument 'item_seq' must be a 2-dimensional int64 tensor")
    if num_items < 1:
        raise RuntimeError(f"seq_mask: num_items must be >= 1, got {num_items}")
    if mask_token <= num_items:
        raise RuntimeError("seq_mask: mask_token must be > num_items")
    if not 0.0 <= mask_prob <= 1.0:
        raise RuntimeError(f"seq_mask: mask_prob must lie in [0, 1], got {mask_prob}")
    if item_attributes is not None:
        if item_attributes.dtype != torch.int64 or item_attributes.dim() != 2:
            raise RuntimeError(
                "seq_mask: argument 'item_attributes' must be a 2-dimensional int64 tensor")
        if item_attributes.shape[0] < num_items + 1:
            raise RuntimeError("seq_mask: item_attributes needs a row per item id 0..num_items")


def _negative(rng: _Stream, distinct: list[int], num_items: int, row: int) -> int:
    free = num_items - len(distinct)
    if free <= 0:
        raise RuntimeError(f"seq_mask: row {row} contains all {num_items} items, so no "
                           "negative item exists for its masked positions")
    members = set(distinct)
    for _ in range(_MAX_NEGATIVE_TRIES):
        c = 1 + rng.below(num_items)
        if c not in members:
            return c
    c = 1 + rng.below(free)  # the rank among non-members, walked past the members
    for d in distinct:
        if d > c:
            break
        c += 1
    return c


def seq_mask(item_seq: Tensor, *, num_items: int, mask_token: int, mask_prob: float = 0.2,
             seed: int, item_attributes: Tensor | None = None,
             mask_last: bool = True) -> SeqMaskOutput:
    """Same contract as :func:`seqrec.ops.seq_mask` (see there), one sequence at a time."""
    check_same_device("seq_mask", item_seq=item_seq, item_attributes=item_attributes)
    seed = seed_int64(seed, "seq_mask")
    _check(item_seq, item_attributes, num_items, mask_token, mask_prob)
    rows = item_seq.tolist()
    n = item_seq.shape[1]
    attrs = item_attributes.tolist() if item_attributes is not None else None
    slots = item_attributes.shape[1] if item_attributes is not None else 0

    seqs = []
    for b, row in enumerate(rows):
        first = next((t for t, v in enumerate(row) if v != 0), n)
        for t in range(first, n):
            if row[t] == 0:
                raise RuntimeError(f"seq_mask: item_seq must be left-padded, but row {b} has "
                                   f"a 0 at position {t} after a real item")
            if not 1 <= row[t] <= num_items:
                raise RuntimeError(f"seq_mask: item_seq ids must lie in [0, num_items="
                                   f"{num_items}], got {row[t]} at row {b}, position {t}")
        seqs.append(row[first:])
    offsets = [0]
    for s in seqs:
        offsets.append(offsets[-1] + len(s))
    long_sequence = [item for s in seqs for item in s]

    out = {k: [] for k in SeqMaskOutput._fields}
    for b, seq in enumerate(seqs):
        length = len(seq)
        pad = [0] * (n - length)
        # Masked item prediction: one uniform per item, in order.
        mask_rng = _Stream(seed, b, _PURPOSE_MASK)
        neg_rng = _Stream(seed, b, _PURPOSE_NEGATIVE)
        distinct = sorted(set(seq))
        masked_items, pos_items, neg_items, attribute_targets = [], [], [], []
        for j, item in enumerate(seq):
            masked = mask_rng.uniform01() < mask_prob
            if mask_last and j == length - 1:
                masked = True
            if masked:
                masked_items.append(mask_token)
                pos_items.append(item)
                neg_items.append(_negative(neg_rng, distinct, num_items, b))
                attribute_targets.append(list(attrs[item]) if slots else [])
            else:
                masked_items.append(item)
                pos_items.append(0)
                neg_items.append(0)
                attribute_targets.append([0] * slots)
        # Segment prediction.
        if length < 2:
            masked_segment = pos_segment = neg_segment = list(seq)
            start, seg_len = 0, 0
        else:
            seg_rng = _Stream(seed, b, _PURPOSE_SEGMENT)
            seg_len = 1 + seg_rng.below(length // 2)
            start = seg_rng.below(length - seg_len + 1)
            others = long_sequence[:offsets[b]] + long_sequence[offsets[b + 1]:]
            if len(others) >= seg_len:
                k0 = seg_rng.below(len(others) - seg_len + 1)
                negative = others[k0:k0 + seg_len]
            elif others:
                k0 = seg_rng.below(len(others))
                negative = [others[(k0 + j) % len(others)] for j in range(seg_len)]
            else:
                negative = [1 + seg_rng.below(num_items) for _ in range(seg_len)]
            end = start + seg_len
            masked_segment = seq[:start] + [mask_token] * seg_len + seq[end:]
            pos_segment = [mask_token] * start + seq[start:end] + [mask_token] * (length - end)
            neg_segment = [mask_token] * start + negative + [mask_token] * (length - end)
        out["masked_items"].append(pad + masked_items)
        out["pos_items"].append(pad + pos_items)
        out["neg_items"].append(pad + neg_items)
        out["masked_segment_seq"].append(pad + masked_segment)
        out["pos_segment"].append(pad + pos_segment)
        out["neg_segment"].append(pad + neg_segment)
        out["segment_start"].append(len(pad) + start if seg_len else 0)  # absolute position
        out["segment_len"].append(seg_len)
        out["attribute_targets"].append([[0] * slots for _ in pad] + attribute_targets)

    batch = len(seqs)
    def as_tensor(values, *shape):
        return torch.tensor(values, dtype=torch.int64).reshape(*shape)
    return SeqMaskOutput(
        *(as_tensor(out[k], batch, n) for k in SeqMaskOutput._fields[:6]),
        as_tensor(out["segment_start"], batch),
        as_tensor(out["segment_len"], batch),
        as_tensor(out["attribute_targets"], batch, n, slots),
    )
