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

__all__ = ["once_differentiable", "register_loop_vmap"]


class _NoSecondDerivative(torch.autograd.Function):
    """Identity (a copy) on the first ``n`` tensors; differentiating through it raises.
    In the setup_context form, so that torch.func transforms accept it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op: str, n: int, *tensors: Tensor):
        return tuple(t.clone() for t in tensors[:n])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[0]

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


# ---------------------------------------------------------------------------------------
# vmap: a batching rule for every op, one slice at a time.

def _take(arg, dim, i):
    if isinstance(arg, (list, tuple)):
        dims = dim if isinstance(dim, (list, tuple)) else [dim] * len(arg)
        return type(arg)(_take(a, d, i) for a, d in zip(arg, dims))
    if isinstance(arg, Tensor) and dim is not None:
        return arg.select(dim, i)
    return arg


def _stack(outs):
    first = outs[0]
    if isinstance(first, (list, tuple)):
        pairs = [_stack([o[j] for o in outs]) for j in range(len(first))]
        return type(first)(p[0] for p in pairs), type(first)(p[1] for p in pairs)
    return torch.stack(outs), 0


def register_loop_vmap(name: str) -> None:
    """Batching rule of ``seqrec::<name>`` for ``torch.vmap``: the op on each slice of the
    mapped dimension, results stacked. Exactly ``map`` semantics (a dropout seed gives
    every slice the mask it would get alone), at the cost of one call per slice; the ops'
    own batch dimensions are where speed comes from."""
    op = getattr(torch.ops.seqrec, name).default

    def rule(info, in_dims, *args, **kwargs):
        outs = [op(*(_take(a, d, i) for a, d in zip(args, in_dims)), **kwargs) for i in range(info.batch_size)]
        return _stack(outs)

    torch.library.register_vmap(f"seqrec::{name}", rule)
