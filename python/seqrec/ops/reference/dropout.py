"""Plain-PyTorch reference of ``dropout``, and the counter-based keep mask every
seqrec dropout draws (``csrc/ops/common/hash_dropout.h``), reproduced bit for bit with
int64 tensor arithmetic."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .._checks import check_host_tensor

__all__ = ["dropout", "dropout_keep_mask"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    """A uint64 written as the int64 with the same bits."""
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


def _mix64_int(x: int) -> int:
    """splitmix64's finalizer on a Python int (mod 2**64); the kernel's ``mix64``."""
    x &= _MASK64
    x ^= x >> 30
    x = (x * _M1) & _MASK64
    x ^= x >> 27
    x = (x * _M2) & _MASK64
    x ^= x >> 31
    return x


def _srl(x: Tensor, k: int) -> Tensor:
    # Logical right shift of int64 bits (torch's >> on int64 is arithmetic).
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(x: Tensor) -> Tensor:
    # int64 multiplication wraps modulo 2**64, which is exactly uint64 arithmetic.
    x = x ^ _srl(x, 30)
    x = x * _signed(_M1)
    x = x ^ _srl(x, 27)
    x = x * _signed(_M2)
    return x ^ _srl(x, 31)


def dropout_keep_mask(seed: int | Tensor, shape: Sequence[int], p: float, device=None) -> Tensor:
    """The keep mask of :func:`dropout` and of ``dif_attention``'s attention dropout,
    as a bool tensor of ``shape``.

    Element with flat (row-major) index ``t`` of ``shape`` (for the attention:
    [B, H, nq, nk]) is kept iff
    ``mix64(mix64(seed) + (t + 1) * 0x9E3779B97F4A7C15) >> 32 >= round(p * 2**32)``
    (uint64 arithmetic, ``mix64`` = splitmix64's finalizer): the ``t``-th output of a
    splitmix64 stream seeded with ``mix64(seed)``. A pure function of (seed, index, p),
    so the backward regenerates the forward's mask and every backend draws the same one.
    ``seed``: an int or a one-element int64 tensor (read without leaving the graph).
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    thr = min(int(round(p * 4294967296.0)), 1 << 32)
    if isinstance(seed, Tensor):
        state = _mix64(seed.reshape(()).to(device=device, dtype=torch.int64))
    else:
        state = _signed(_mix64_int(int(seed)))
    t = torch.arange(1, numel + 1, dtype=torch.int64, device=device)
    h = _mix64(t * _signed(_GOLDEN) + state)
    return (_srl(h, 32) >= thr).reshape(tuple(shape))


def dropout(x: Tensor, seed: int | Tensor, p: float) -> Tensor:
    """Reference of ``torch.ops.seqrec.dropout``: ``x * keep / (1 - p)`` with the keep
    mask of :func:`dropout_keep_mask` over ``x.shape``, the factor rounded to x's dtype
    once (in float32 for half types) as the kernel does. Differentiable by autograd."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if isinstance(seed, Tensor):
        check_host_tensor("dropout", "seed", seed)
    keep = dropout_keep_mask(seed, x.shape, p, device=x.device)
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    scale = torch.tensor(1.0 / (1.0 - p), dtype=compute).item()
    return (x.to(compute) * (keep.to(compute) * scale)).to(x.dtype)
