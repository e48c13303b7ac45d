"""The seed contract of every seqrec operator that draws random numbers (``dropout``,
``dif_attention``, ``seq_mask``), enforced here and nowhere else.

A seed is an integer in ``[-2**63, 2**64)``: the kernels read its 64 bits, so ``s`` and
``s - 2**64`` are the same seed (the two's-complement int64 the kernels receive). The
range takes both the signed seeds drawn from torch's generator and the unsigned 64-bit
hashes the pretrainer derives per batch; anything outside it raises ValueError naming
the argument, before it reaches the binding (which would fail with "Overflow when
unpacking long long"). A seed tensor holds one integer element and lives on the CPU
(or any device holding a value: it is read once, on the host); ``meta`` holds no value.
"""
from __future__ import annotations

import operator

import torch
from torch import Tensor

__all__ = ["SEED_MIN", "SEED_END", "seed_int64", "seed_tensor"]

SEED_MIN, SEED_END = -(1 << 63), 1 << 64


def seed_int64(seed: int, op: str, name: str = "seed") -> int:
    """``seed`` checked against the contract and folded into int64 (the kernels' type).

    Raises:
        TypeError: ``seed`` is not an integer (bools and floats are refused).
        ValueError: ``seed`` outside ``[-2**63, 2**64)``.
    """
    if isinstance(seed, bool) or isinstance(seed, float):
        raise TypeError(f"{op}: argument '{name}' must be an int, got {type(seed).__name__}")
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"{op}: argument '{name}' must be an int, got {type(seed).__name__}") from None
    if not SEED_MIN <= value < SEED_END:
        raise ValueError(f"{op}: argument '{name}' must lie in [-2**63, 2**64), got {value}")
    return value - SEED_END if value >= 1 << 63 else value


def seed_tensor(seed: int | Tensor | None, generator: torch.Generator | None = None, *,
                op: str = "seed_tensor", name: str = "seed") -> Tensor:
    """``seed`` as the one-element int64 CPU tensor the kernels read.

    None draws one from ``generator`` (default: torch's global CPU generator), so
    ``torch.manual_seed`` makes a run reproducible and a trainer checkpointing the
    generator state resumes it exactly.
    """
    if seed is None:
        return torch.randint(-(2 ** 63), 2 ** 63 - 1, (1,), dtype=torch.int64, generator=generator)
    if isinstance(seed, Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise ValueError(f"{op}: argument '{name}' must be an int or a one-element integer tensor, "
                             f"got {seed.dtype} {tuple(seed.shape)}")
        if seed.device.type == "meta":
            raise RuntimeError(f"{op}: argument '{name}' is on meta, which holds no value; pass an int "
                               "or a CPU tensor")
        return seed.reshape(1).to(device="cpu", dtype=torch.int64)
    return torch.tensor([seed_int64(seed, op, name)], dtype=torch.int64)
