"""Losses over the whole item table, written for the shape of their work: a [N, V] matrix
of logits that dwarfs everything else in a training step (Beauty: N ~ 2000 positions,
V = 12,101 items)."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..ops.backend import get_backend

__all__ = ["softmax_nll", "mixture_nll", "max_intention_nll", "confident_info_nce"]


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
    return _apply_autocast(_SoftmaxNLL, hidden, weight, target)


def _apply_autocast(function: type[torch.autograd.Function], x: Tensor, weight: Tensor, *rest) -> Tensor:
    """``function.apply(x, weight, *rest)``; under ``torch.autocast`` (whose state the
    backward does not see) ``x`` and ``weight`` first go to its dtype and the Function runs
    with autocast off, so forward and backward compute in one dtype: the [N, V] products
    in bf16/fp16 (what autocast's matmul would do), their softmax accumulated in float32
    by the kernels, and the per-row result returned in float32."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return function.apply(x, weight, *rest)
    dtype = torch.get_autocast_dtype(device_type)
    with torch.autocast(device_type, enabled=False):
        return function.apply(x.to(dtype), weight.to(dtype), *rest).float()


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
        # The check reads the values (a host sync, a data-dependent branch): a compiled
        # graph always takes the general path, which gives the same gradient.
        uniform = (not torch.compiler.is_compiling() and g.size(0) > 0
                   and bool((grad == grad[0]).all()))
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


def mixture_nll(phi: Tensor, weight: Tensor, target: Tensor, *, backend: str | None = None,
                chunk: int | None = None) -> Tensor:
    """Negative log-likelihood of a mixture softmax over K vectors and all items.

    ``nll[r] = logsumexp_{k,j} <phi[r,k], weight[j]> - logsumexp_k <phi[r,k], weight[target[r]]>``

    Args:
        phi: [R, K, D] the K vectors of each of R rows.
        weight: [V, D] the item table (without the padding row).
        target: [R] int64 indices into ``weight``.
        backend: ``"reference"`` materialises the [R, K, V] logits and lets autograd
            differentiate them (what one writes in plain PyTorch); ``"seqrec"`` streams
            over blocks of items: forward keeps only per-row log-sum-exps, backward
            recomputes each block's logits and turns them in place into the gradient
            (two matrix products per block), so nothing of size [R, K, V] is ever held.
        chunk: items per block for ``"seqrec"`` (default: about 2^18 logits, 1 MiB in
            float32, per block and at least 64 items: on the 2-core benchmark machine a
            Beauty batch's forward+backward takes 1.1 s at 2^18 vs 1.7 s at 2^20, as
            smaller blocks stay in cache across the exp and the two products).

    Returns:
        [R] per-row NLL; differentiable w.r.t. ``phi`` and ``weight``.
    """
    if phi.dim() != 3 or weight.dim() != 2 or phi.size(2) != weight.size(1):
        raise ValueError(
            f"mixture_nll: phi must be [R, K, D] and weight [V, D], got {tuple(phi.shape)} "
            f"and {tuple(weight.shape)}"
        )
    if target.shape != phi.shape[:1]:
        raise ValueError(f"mixture_nll: target must be [R={phi.size(0)}], got {tuple(target.shape)}")
    if get_backend(backend) == "reference":
        logits = phi @ weight.t()  # [R, K, V]
        positive = logits.gather(2, target[:, None, None].expand(-1, logits.size(1), 1))
        return logits.flatten(1).logsumexp(1) - positive.squeeze(2).logsumexp(1)
    if chunk is None:
        chunk = max(64, (1 << 18) // max(phi.size(0) * phi.size(1), 1))
    return _apply_autocast(_MixtureNLL, phi, weight, target, int(chunk))


class _MixtureNLL(torch.autograd.Function):
    """Blocked forward/backward of :func:`mixture_nll` (see its docstring)."""

    @staticmethod
    def forward(ctx, phi: Tensor, weight: Tensor, target: Tensor, chunk: int) -> Tensor:
        r, k, d = phi.shape
        rows = phi.reshape(r * k, d)
        lse_blocks = [torch.logsumexp(rows @ weight[start : start + chunk].t(), 1)  # [RK] per block
                      for start in range(0, weight.size(0), chunk)]
        if lse_blocks:
            lse_rows = torch.stack(lse_blocks, 1).logsumexp(1)
        else:  # no item at all: every likelihood is empty
            lse_rows = rows.new_full((r * k,), float("-inf"))
        lse = lse_rows.view(r, k).logsumexp(1)  # [R]
        positive = torch.einsum("rkd,rd->rk", phi, weight[target])  # [R, K]
        ctx.save_for_backward(phi, weight, target, lse, torch.softmax(positive, 1))
        ctx.chunk = chunk
        return lse - positive.logsumexp(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        phi, weight, target, lse, resp = ctx.saved_tensors
        r, k, d = phi.shape
        rows = phi.reshape(r * k, d)
        need_phi, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        lse_rows = lse.repeat_interleave(k)[:, None]  # [RK, 1]
        g_rows = grad.repeat_interleave(k)[:, None]
        # d nll / d logit = g * softmax over (k, j) of the row's logits. With g > 0 (a
        # mean or a sum of the losses) it is exp(logit - lse + log g): the GEMM adds the
        # shift and one in-place exp finishes the block.
        # A data-dependent branch (a host sync): a compiled graph takes the general path.
        positive_grad = not torch.compiler.is_compiling() and bool((grad > 0).all())
        shift = (g_rows.log() - lse_rows) if positive_grad else -lse_rows
        g_phi = torch.zeros_like(rows) if need_phi else None
        g_weight = torch.empty_like(weight) if need_weight else None
        for start in range(0, weight.size(0), ctx.chunk):
            block = weight[start : start + ctx.chunk]
            p = torch.addmm(shift, rows, block.t()).exp_()  # [RK, C]
            if not positive_grad:
                p.mul_(g_rows)
            if need_phi:
                g_phi.addmm_(p, block)
            if need_weight:
                torch.mm(p.t(), rows, out=g_weight[start : start + ctx.chunk])
        # The positive term: - g * resp_k at the target item of each row.
        coef = (grad[:, None] * resp).unsqueeze(-1)  # [R, K, 1]
        if need_phi:
            g_phi = g_phi.view(r, k, d) - coef * weight[target][:, None, :]
        if need_weight:
            g_weight.index_add_(0, target, -(coef * phi).sum(1))
        return g_phi, g_weight, None, None


def max_intention_nll(phi: Tensor, items: Tensor, scale: float) -> Tensor:
    """In-batch seq2item of DSS pretraining: row b's positive is ``items[b]``, every
    item of the batch is a candidate, and the positive is scored by its best intention.

    ``logits[b, k, c] = scale * <phi[b, k], items[c]>``,
    ``nll[b] = logsumexp_{k, c} logits[b, k, c] - max_k logits[b, k, b]``
    (the numerator a max over intentions, the denominator a sum over intentions and
    in-batch items, as the DSSRec reading of the paper).

    Args:
        phi: [B, K, D] the intention vectors of each input.
        items: [B, D] each row's next-item embedding.
        scale: multiplies the dot products (1 / sqrt(D)).

    Returns:
        [B] per-row NLL, differentiable w.r.t. both inputs.
    """
    if phi.dim() != 3 or items.dim() != 2 or items.shape != (phi.size(0), phi.size(2)):
        raise ValueError(f"max_intention_nll: phi must be [B, K, D] and items [B, D], got {tuple(phi.shape)} "
                         f"and {tuple(items.shape)}")
    logits = torch.einsum("bkd,cd->bkc", phi, items) * scale  # [B, K, B]
    positive = logits.diagonal(dim1=0, dim2=2).amax(0)  # [B]: max_k logits[b, k, b]
    return logits.flatten(1).logsumexp(1) - positive


def confident_info_nce(past: Tensor, future: Tensor, scale: float, confidence_lambda: float
                       ) -> tuple[Tensor, Tensor]:
    """Per-(sample, intention) InfoNCE of DSS pretraining and its top-lambda confidence cut.

    Anchor (b, k) is ``past[b, k]``; its positive is ``future[b, k]``, its negatives
    every other ``future[b', k']`` of the batch:
    ``loss[b, k] = logsumexp_{b', k'} scale <past[b, k], future[b', k']> - scale <past[b, k], future[b, k]>``.
    The cut keeps the pairs whose loss is at or below the ``floor(confidence_lambda * B * K)``-th
    smallest (``torch.kthvalue``; ties at the threshold are all kept; at least the
    smallest one), a selection that is not differentiated.

    Args:
        past, future: [B, K, D].
        scale: multiplies the dot products (1 / (sqrt(D) * temperature)).
        confidence_lambda: in (0, 1].

    Returns:
        ``(loss [B, K], keep [B, K] bool)``.
    """
    if past.dim() != 3 or past.shape != future.shape:
        raise ValueError(f"confident_info_nce: past and future must both be [B, K, D], got {tuple(past.shape)} "
                         f"and {tuple(future.shape)}")
    if not 0 < confidence_lambda <= 1:
        raise ValueError(f"confident_info_nce: confidence_lambda must be in (0, 1], got {confidence_lambda}")
    b, k, d = past.shape
    logits = (past.reshape(b * k, d) @ future.reshape(b * k, d).t()) * scale  # [BK, BK]
    loss = logits.logsumexp(1) - logits.diagonal()
    with torch.no_grad():
        rank = max(1, math.floor(confidence_lambda * b * k))
        threshold = loss.kthvalue(rank).values if loss.numel() else loss.new_zeros(())
        keep = loss <= threshold
    return loss.view(b, k), keep.view(b, k)
