"""``dropout``: elementwise dropout with a hashed, never stored, keep mask.

Python face of ``torch.ops.seqrec.dropout`` (contract: ``csrc/ops/dropout/dropout.h``):
fake kernel for ``torch.compile``, autograd formula (the same op on the gradient, with
the same seed), and the typed wrapper :func:`dropout`.

Why not ``torch.nn.functional.dropout``: on the CPU it draws a Bernoulli variate per
element from a sequential generator and keeps the mask for the backward; the hashed mask
is drawn in parallel, several times faster (``benchmarks/bench_dropout.py``), and the
backward regenerates it from the seed, so the autograd graph holds no mask. The models'
hidden dropout runs through it (``seqrec.models.layers.Dropout``).
"""
from __future__ import annotations

import torch
from torch import Tensor

import seqrec._loader  # noqa: F401  (registers torch.ops.seqrec.*)

from . import reference
from ._autograd import register_loop_vmap
from ._checks import check_host_tensor
from ._random import seed_tensor
from ._registry import register_cuda_reference
from .backend import get_backend

__all__ = ["dropout"]


def dropout(
    x: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by
    ``1 / (1 - p)``, like ``torch.nn.functional.dropout``, with a different random
    stream: element ``t`` (row-major index in ``x.shape``) is kept iff a hash of
    ``(seed, t)`` clears ``p`` (see :func:`seqrec.ops.reference.dropout.dropout_keep_mask`).

    Args:
        x: any shape; float32, float64, float16 or bfloat16.
        p: drop probability in [0, 1).
        training: False (or ``p == 0``) returns ``x`` itself, as ``F.dropout`` does.
        seed: int or one-element integer tensor; None draws one from ``generator``
            (default: torch's global generator), so ``torch.manual_seed`` makes runs
            reproducible. The same seed and shape always give the same mask, on every
            backend and thread count.
        generator: see ``seed``.
        backend: ``"seqrec"`` (the op: the C++ kernel on the CPU, the reference
            registered as its CUDA kernel until one is written) or ``"reference"`` (plain PyTorch, the same mask); None uses the
            process-wide default.

    Returns:
        A new contiguous tensor of x's shape and dtype (``x`` itself when not dropping).
        Differentiable (any order): the gradient is the incoming gradient dropped with
        the same mask; nothing but the seed is saved for it.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"dropout: x must be a floating-point tensor, got "
                         f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    seed_t = seed_tensor(seed, generator, op="dropout")
    if get_backend(backend) == "reference":
        return reference.dropout(x, seed_t, float(p))
    return _DropoutFunction.apply(x, seed_t, float(p))


@torch.library.register_fake("seqrec::dropout")
def _dropout_fake(x, seed, p):
    check_host_tensor("dropout", "seed", seed)
    return x.new_empty(x.shape)  # contiguous, as the kernel's output


def _setup_context(ctx, inputs, output):
    _, seed, p = inputs
    ctx.save_for_backward(seed)
    ctx.p = p


def _backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    # Linear in x with a mask fixed by (seed, shape, p): the same op on the gradient.
    return torch.ops.seqrec.dropout.default(grad, seed, ctx.p), None, None


torch.library.register_autograd("seqrec::dropout", _backward, setup_context=_setup_context)


class _DropoutFunction(torch.autograd.Function):
    """The same formula as an ``autograd.Function`` in the setup_context form, which the
    wrapper calls, so that ``torch.func`` transforms accept it."""

    generate_vmap_rule = True  # through the op's batching rule (register_loop_vmap)

    @staticmethod
    def forward(x, seed, p):
        return torch.ops.seqrec.dropout.default(x, seed, p)

    setup_context = staticmethod(_setup_context)

    @staticmethod
    def backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        # As _backward, through this Function again so that torch.func sees every order.
        return _DropoutFunction.apply(grad, seed, ctx.p), None, None


register_loop_vmap("dropout")


register_cuda_reference("dropout", reference.dropout)
