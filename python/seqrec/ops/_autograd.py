"""Backward formulas that are differentiable once, and say so when asked for more.

The backward ops (``seqrec::dif_attention_backward``, ``seqrec::intent_cluster_backward``)
have no derivative of their own. Left alone, autograd treated their outputs as
constants: a second derivative (``create_graph=True``, ``gradgradcheck``,
``torch.func.hessian``) came out silently zero, with only a warning. With
:func:`once_differentiable` the backward runs without recording a graph, and when the
caller records one its results are routed through a node whose own backward raises, so
differentiating them again is a hard error naming the op, while a first derivative taken
with ``create_graph=True`` (as ``torch.func.grad`` does) still works.

``torch.autograd.function.once_differentiable`` does the same for ``autograd.Function``
but neither accepts list outputs (``dif_attention``'s side-source gradients) nor sees the
saved inputs, only the incoming gradients, when it decides whether a graph is wanted.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

__all__ = ["once_differentiable"]


class _NoSecondDerivative(torch.autograd.Function):
    """Identity on the first ``n`` tensors; differentiating through it raises."""

    @staticmethod
    def forward(ctx, op: str, n: int, *tensors: Tensor):
        ctx.op = op
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{ctx.op}: second derivatives are not implemented (its backward is once "
            "differentiable): differentiate the gradient with the reference backend "
            "(backend=\"reference\") instead")


def once_differentiable(op: str) -> Callable:
    """Decorate a ``register_autograd`` backward ``fn(ctx, *grads)`` of ``op``."""

    def decorate(backward: Callable) -> Callable:
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                result = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return result
            sources = [g for g in grads if isinstance(g, Tensor) and g.requires_grad]
            sources += [t for t in ctx.saved_tensors if t is not None and t.requires_grad]
            if not sources:
                return result
            flat = [t for r in result for t in (r if isinstance(r, (list, tuple)) else [r])
                    if isinstance(t, Tensor)]
            guarded = iter(_NoSecondDerivative.apply(op, len(flat), *flat, *sources))

            def swap(r):
                if isinstance(r, (list, tuple)):
                    return type(r)(swap(t) for t in r)
                return next(guarded) if isinstance(r, Tensor) else r

            return tuple(swap(r) for r in result)

        return wrapper

    return decorate
