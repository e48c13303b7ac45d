"""The seed every hashed-mask operator (``dropout``, ``dif_attention``) takes."""
from __future__ import annotations

import torch
from torch import Tensor


def seed_tensor(seed: int | Tensor | None, generator: torch.Generator | None = None) -> Tensor:
    """``seed`` as the one-element int64 CPU tensor the kernels read.

    None draws one from ``generator`` (default: torch's global CPU generator), so
    ``torch.manual_seed`` makes a run reproducible and a trainer checkpointing the
    generator state resumes it exactly.
    """
    if seed is None:
        return torch.randint(-(2 ** 63), 2 ** 63 - 1, (1,), dtype=torch.int64, generator=generator)
    if isinstance(seed, Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point or seed.dtype.is_complex:
            raise ValueError(f"seed must be an int or a one-element integer tensor, got {seed.dtype} "
                             f"{tuple(seed.shape)}")
        return seed.reshape(1).to(device="cpu", dtype=torch.int64)
    return torch.tensor([int(seed)], dtype=torch.int64)
