"""Losses over the whole item table, written for the shape of their work: a [N, V] matrix
of logits that dwarfs everything else in a training step (Beauty: N ~ 2000 positions,
V = 12,101 items)."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["softmax_nll"]


def softmax_nll(hidden: Tensor, weight: Tensor, target: Tensor) -> Tensor:
    """Per-row cross-entropy of the full softmax over ``weight``'s rows:
    ``nll[r] = logsumexp_j <hidden[r], weight[j]> - <hidden[r], weight[target[r]]>``.

    The value of ``F.cross_entropy(hidden @ weight.T, target, reduction="none")`` with
    fewer passes over the [N, V] matrix: both keep the log-probabilities for the
    backward, but this backward turns them into the logits' gradient with one exp (one
    [N, V] temporary) where autograd builds a zero-filled one-hot gradient and then runs
    the log-softmax backward (two), and its [N, V] rows are padded to a multiple of 8
    items (see ``_SoftmaxNLL.forward``), and on the CPU the log-softmax overwrites the
    logits. ``benchmarks/bench_softmax_nll.py``: 1.55x at hidden 64, 1.31x at 256
    (Beauty-sized batch, one CPU thread). Once differentiable.

    Args:
        hidden: [N, D] float query vectors.
        weight: [V, D] the item table (without a padding row).
        target: [N] int64 indices into ``weight``.

    Returns:
        [N] per-row NLL, differentiable w.r.t. ``hidden`` and ``weight``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise ValueError(f"softmax_nll: hidden must be [N, D] and weight [V, D], got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if target.shape != hidden.shape[:1] or target.dtype != torch.int64:
        raise ValueError(f"softmax_nll: target must be int64 [N={hidden.size(0)}], got {target.dtype} "
                         f"{tuple(target.shape)}")
    return _SoftmaxNLL.apply(hidden, weight, target)


# The [N, V] matrices get a row length that is a multiple of this many elements.
_ROW_MULTIPLE = 8


class _SoftmaxNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor) -> Tensor:
        # Item counts are arbitrary (Beauty: 12,101), and a matrix product that writes
        # rows of odd length runs far below its peak on the CPU BLAS (one thread, the
        # [2000, 256] x [256, 12101] logits: ~1.7x slower than into rows of 12,104).
        # So the table gets zero rows up to a multiple of 8 and their logits are set to
        # -inf: they take no probability and get no gradient, and every [N, V] pass
        # (product, log-softmax, exp, the two backward products) runs on aligned rows.
        num_items = weight.size(0)
        padded = -(-num_items // _ROW_MULTIPLE) * _ROW_MULTIPLE
        if padded != num_items:
            weight = torch.cat([weight, weight.new_zeros(padded - num_items, weight.size(1))])
        logits = hidden @ weight.t()
        logits[:, num_items:] = float("-inf")
        if logits.is_cpu:
            # Over the logits' own buffer (the CPU kernel finishes reading a row before
            # writing it): one [N, V] allocation fewer. A fresh ~100 MB buffer costs more
            # than the pass itself, since glibc maps it anew and the kernel zero-fills
            # every page: 26 vs 68 ms at N = 2000, V = 12,104 on one thread.
            log_probs = torch.log_softmax(logits, dim=1, out=logits)
        else:
            log_probs = torch.log_softmax(logits, dim=1)  # the logits die here
        ctx.num_items = num_items
        ctx.save_for_backward(hidden, weight, target, log_probs)
        return -log_probs.gather(1, target[:, None]).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight, target, log_probs = ctx.saved_tensors
        # d nll[r] / d logit[r, j] = softmax[r, j] - [j == target[r]], times grad[r].
        g = log_probs.exp()
        rows = torch.arange(g.size(0), device=g.device)
        g[rows, target] -= 1
        # A mean or sum reduction sends every row the same factor: scale the [N, D] and
        # [V, D] results instead of the [N, V] matrix.
        uniform = g.size(0) > 0 and bool((grad == grad[0]).all())
        if not uniform:
            g.mul_(grad[:, None])
        factor = grad[0] if uniform else None
        g_hidden = g_weight = None
        if ctx.needs_input_grad[0]:
            g_hidden = g @ weight
            if factor is not None:
                g_hidden.mul_(factor)
        if ctx.needs_input_grad[1]:
            g_weight = (g.t() @ hidden)[:ctx.num_items]
            if factor is not None:
                g_weight.mul_(factor)
        return g_hidden, g_weight, None
