"""Losses over the whole item table, written for the shape of their work: a [N, V] matrix
of logits that dwarfs everything else in a training step (Beauty: N ~ 2000 positions,
V = 12,101 items)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..data.negatives import NEGATIVE_LOG_Q
from ..ops.backend import get_backend

__all__ = ["next_item_nll", "softmax_nll", "streamed_softmax_nll", "mixture_nll", "max_intention_nll",
           "confident_info_nce", "sampled_softmax_loss", "sampled_softmax_nll", "NEGATIVE_LOG_Q", "CE_MEMORY"]

#: Bytes of logits :func:`softmax_nll` may hold at once (its [N, V] log-probabilities
#: and the backward's [N, V] gradient): above it the full softmax streams over blocks of
#: items (:func:`streamed_softmax_nll`) in blocks of this size. 1 GiB.
CE_MEMORY = 1 << 30


def softmax_nll(hidden: Tensor, weight: Tensor, target: Tensor, *, memory: int | None = None) -> Tensor:
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

    When its two [N, V] matrices would take more than ``memory`` bytes (default
    :data:`CE_MEMORY`; at 10^6 items a batch of 256 x 50 positions needs ~51 GB), the
    same value and gradient come from :func:`streamed_softmax_nll` with blocks of
    ``memory`` bytes: exact CE over any catalogue within a fixed budget.

    Args:
        hidden: [N, D] float query vectors.
        weight: [V, D] the item table (without a padding row).
        target: [N] int64 indices into ``weight``.
        memory: bytes of logits held at once (None: :data:`CE_MEMORY`).

    Returns:
        [N] per-row NLL, differentiable w.r.t. ``hidden`` and ``weight``.
    """
    _check_ce("softmax_nll", hidden, weight, target)
    memory = CE_MEMORY if memory is None else _check_memory("softmax_nll", memory)
    padded = -(-weight.size(0) // _ROW_MULTIPLE) * _ROW_MULTIPLE
    if 2 * hidden.size(0) * padded * hidden.element_size() > memory:  # log-probs + the backward's gradient
        return _apply_autocast(_StreamedNLL, hidden, weight, target, _block_items(memory, hidden))
    return _apply_autocast(_SoftmaxNLL, hidden, weight, target)


def _check_ce(name: str, hidden: Tensor, weight: Tensor, target: Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise ValueError(f"{name}: hidden must be [N, D] and weight [V, D], got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if target.shape != hidden.shape[:1] or target.dtype != torch.int64:
        raise ValueError(f"{name}: target must be int64 [N={hidden.size(0)}], got {target.dtype} "
                         f"{tuple(target.shape)}")


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


def _check_memory(name: str, memory) -> int:
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
        raise ValueError(f"{name}: memory must be a positive int (bytes), got {memory!r}")
    return memory


def _block_items(memory: int, hidden: Tensor) -> int:
    """Items per block so that one [N, block] matrix of logits takes at most ``memory``."""
    return max(1, memory // max(hidden.size(0) * hidden.element_size(), 1))


def streamed_softmax_nll(hidden: Tensor, weight: Tensor, target: Tensor, *, block_items: int | None = None,
                         memory: int | None = None) -> Tensor:
    """Exact full-softmax cross-entropy, streamed over blocks of items.

    The value and gradient of ``F.cross_entropy(hidden @ weight.T, target,
    reduction="none")`` without ever holding more than one [N, block] matrix of logits:
    the forward keeps a running log-sum-exp per row (max and scaled sum, updated block by
    block); the backward recomputes each block's logits and turns them in place into
    that block's gradient ``softmax - onehot`` (two matrix products per block). Memory
    beyond the inputs and their gradients: one block plus O(N) vectors, whatever V.
    Once differentiable.

    Args:
        hidden: [N, D] float query vectors.
        weight: [V, D] the item table (without a padding row).
        target: [N] int64 indices into ``weight``.
        block_items: items per block; or
        memory: bytes of one block of logits (block_items = memory // (N * element
            size)). Neither: blocks of 64 MiB.

    Returns:
        [N] per-row NLL, differentiable w.r.t. ``hidden`` and ``weight``.
    """
    _check_ce("streamed_softmax_nll", hidden, weight, target)
    if block_items is not None and memory is not None:
        raise ValueError("streamed_softmax_nll: give block_items or memory, not both")
    if block_items is None:
        block_items = _block_items(64 << 20 if memory is None else _check_memory("streamed_softmax_nll", memory),
                                   hidden)
    elif isinstance(block_items, bool) or not isinstance(block_items, int) or block_items < 1:
        raise ValueError(f"streamed_softmax_nll: block_items must be a positive int, got {block_items!r}")
    return _apply_autocast(_StreamedNLL, hidden, weight, target, block_items)


class _StreamedNLL(torch.autograd.Function):
    """Blocked forward/backward of :func:`streamed_softmax_nll` (see its docstring)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, block: int) -> Tensor:
        n = hidden.size(0)
        # Running log-sum-exp of each row: lse = high + log(total), total rescaled when
        # a block raises the row's maximum.
        high = hidden.new_full((n,), float("-inf"))
        total = hidden.new_zeros(n)
        for start in range(0, weight.size(0), block):
            logits = hidden @ weight[start:start + block].t()  # [N, C]: the only [N, *] matrix
            new_high = torch.maximum(high, logits.amax(1))
            total = total * torch.exp(high - new_high) + logits.sub_(new_high[:, None]).exp_().sum(1)
            high = new_high
            del logits
        lse = high + total.log()  # -inf rows when V == 0
        positive = (hidden * weight[target]).sum(1) if n else hidden.new_zeros(0)
        ctx.block = block
        ctx.save_for_backward(hidden, weight, target, lse)
        return lse - positive

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight, target, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # d nll[r] / d logit[r, j] = grad[r] * (softmax[r, j] - [j == target[r]]). With
        # grad > 0 (a mean or a sum), grad * softmax = exp(logit - lse + log grad): the
        # GEMM adds the shift and one in-place exp finishes the block. A compiled graph
        # cannot branch on the values of grad (a host sync): it takes the general path,
        # one more [N, C] multiply per block.
        positive_grad = not torch.compiler.is_compiling() and bool((grad > 0).all())
        shift = ((grad.log() - lse) if positive_grad else -lse)[:, None]
        g_hidden, g_weight = _blocked_softmax_grads(hidden, weight, shift, None if positive_grad else grad[:, None],
                                                    ctx.block, need_hidden, need_weight)
        if need_hidden:
            g_hidden.sub_(grad[:, None] * weight[target])
        if need_weight:
            g_weight.index_add_(0, target, -(grad[:, None] * hidden))
        return g_hidden, g_weight, None, None


def _blocked_softmax_grads(rows: Tensor, weight: Tensor, shift: Tensor, scale: Tensor | None, block: int,
                           need_rows: bool, need_weight: bool) -> tuple[Tensor | None, Tensor | None]:
    """The softmax part of a streamed softmax backward, one block of items at a time:
    ``p = exp(rows @ weight.T + shift)`` (times ``scale`` [N, 1] when given), then
    ``p @ weight`` summed into the rows' gradient and ``p.T @ rows`` written as each
    block's rows of the table's gradient. Only one [N, block] matrix lives at a time.
    ``shift`` [N, 1] is ``log g - lse`` (or ``-lse`` with ``scale = g``). The callers
    subtract the targets' one-hot part."""
    g_rows = torch.zeros_like(rows) if need_rows else None
    g_weight = torch.empty_like(weight) if need_weight else None
    for start in range(0, weight.size(0), block):
        w = weight[start:start + block]
        p = torch.addmm(shift, rows, w.t()).exp_()  # [N, C]
        if scale is not None:
            p.mul_(scale)
        if need_rows:
            g_rows.addmm_(p, w)
        if need_weight:
            torch.mm(p.t(), rows, out=g_weight[start:start + block])
        del p
    return g_rows, g_weight


def sampled_softmax_loss(positive: Tensor, negatives: Tensor, *, log_q: Tensor | None = None,
                         accidental_hits: Tensor | None = None, reduction: str = "none") -> Tensor:
    """Per-row NLL of a sampled softmax with the log-Q correction.

    ``nll[r] = logsumexp([positive[r], negatives[r, j] - log_q[r, j] (j not a hit)]) - positive[r]``

    With ``log_q[r, j] = log(m q(i_j))``, the log of the expected number of times the
    negative's item is drawn among the row's m draws (``q`` the proposal; for m
    independent draws m q(i); for a mix of proposals the sum of each one's expected
    count, see :meth:`~seqrec.data.negatives.NegativeSampler.log_expected_count`), the
    corrected terms ``exp(s_j) / (m q(i_j))`` summed over the draws are an unbiased
    estimate of the full softmax's normaliser over the other items (importance
    sampling: Bengio & Senecal 2008; Yi et al., RecSys 2019), so the loss and its
    gradient tend to full softmax cross-entropy as m grows, whatever the proposal.
    Without it a popularity proposal over-counts popular items by 1/q and the model
    learns to under-score them.

    Accidental hits (a negative that is the row's positive) are removed: their term
    is -inf, so the positive is counted once, as in the full softmax.

    Args:
        positive: [N] logit of each row's positive.
        negatives: [N, m] logits of the sampled negatives.
        log_q: [N, m] log expected counts of the negatives (None: no correction).
        accidental_hits: [N, m] bool, True where a negative is the positive (None: none).

        reduction: "none" (per row), "mean" or "sum", as ``F.cross_entropy``'s.

    Returns:
        [N] per-row NLL (a scalar with "mean" / "sum"), differentiable w.r.t.
        ``positive`` and ``negatives``.
    """
    if positive.dim() != 1 or negatives.dim() != 2 or negatives.size(0) != positive.size(0):
        raise ValueError(f"sampled_softmax_loss: positive must be [N] and negatives [N, m], got "
                         f"{tuple(positive.shape)} and {tuple(negatives.shape)}")
    for name, t in (("log_q", log_q), ("accidental_hits", accidental_hits)):
        if t is not None and t.shape != negatives.shape:
            raise ValueError(f"sampled_softmax_loss: {name} must be [N, m] = {tuple(negatives.shape)}, "
                             f"got {tuple(t.shape)}")
    if accidental_hits is not None and accidental_hits.dtype != torch.bool:
        raise ValueError(f"sampled_softmax_loss: accidental_hits must be bool, got {accidental_hits.dtype}")
    if log_q is not None:
        negatives = negatives - log_q.to(negatives.dtype)
    if accidental_hits is not None:
        negatives = negatives.masked_fill(accidental_hits, float("-inf"))
    logits = torch.cat([positive[:, None], negatives], 1)
    # cross_entropy (target column 0) rather than logsumexp - positive: the same value,
    # with the fused log-softmax kernels (and SINE's trainings as before it used this).
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"sampled_softmax_loss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return F.cross_entropy(logits, logits.new_zeros(logits.size(0), dtype=torch.int64), reduction=reduction)


def sampled_softmax_nll(hidden: Tensor, table: nn.Embedding, target: Tensor, negatives: Tensor, *,
                        log_q: Tensor | None = None, remove_accidental_hits: bool = True,
                        reduction: str = "none") -> Tensor:
    """:func:`sampled_softmax_loss` of dot-product scores ``<hidden[r], table(i)>``.

    Args:
        hidden: [N, D] query vectors.
        table: the item embedding (looked up once for targets and negatives, through the
            module, so a ``sparse=True`` table gets a sparse gradient of the rows used).
        target: [N] int64 positive ids; negatives: [N, m] int64 negative ids.
        log_q: [N, m] ``log(m q)`` of the negatives (None: no correction).
        remove_accidental_hits: mask negatives equal to the row's target.
        reduction: as :func:`sampled_softmax_loss`'s.

    Returns:
        [N] per-row NLL (a scalar with "mean" / "sum").
    """
    if negatives.dim() == 1:
        negatives = negatives[:, None]
    if hidden.dim() != 2 or target.shape != hidden.shape[:1] or negatives.dim() != 2 \
            or negatives.size(0) != hidden.size(0):
        raise ValueError(f"sampled_softmax_nll: hidden must be [N, D], target [N] and negatives [N, m], got "
                         f"{tuple(hidden.shape)}, {tuple(target.shape)} and {tuple(negatives.shape)}")
    if log_q is not None and log_q.dim() == 1:
        log_q = log_q[:, None]
    m = negatives.size(1)
    rows = table(torch.cat([target[:, None], negatives], 1))  # [N, 1 + m, D]: one lookup
    scores = (rows * hidden.unsqueeze(1)).sum(-1)  # [N, 1 + m]
    hits = (negatives == target[:, None]) if remove_accidental_hits else None
    return sampled_softmax_loss(scores[:, 0], scores[:, 1:1 + m], log_q=log_q, accidental_hits=hits,
                                reduction=reduction)


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
        g_phi, g_weight = _blocked_softmax_grads(rows, weight, shift, None if positive_grad else g_rows, ctx.chunk,
                                                 need_phi, need_weight)
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


def next_item_nll(hidden: Tensor, table: nn.Embedding, target: Tensor, loss: str, negatives: Tensor | None = None,
                  *, log_q: Tensor | None = None) -> Tensor:
    """The next-item loss of each row of one user vector per row, ``[N]``.

    Args:
        hidden: [N, D] the rows' user vectors.
        table: the item table ([V + 1, D], row 0 padding).
        target: [N] the next items (ids 1..V; 0 only in rows the caller weighs 0).
        loss: ``"bce"`` (``-log sigmoid(<h, e_pos>) - log(1 - sigmoid(<h, e_neg>))`` with
            one negative per row, ``negatives`` [N]), ``"ce"`` (softmax over items 1..V,
            :func:`softmax_nll`) or ``"sampled"`` (softmax over the target and
            ``negatives`` [N, m], log-Q corrected by ``log_q`` [N, m]:
            :func:`sampled_softmax_nll`).
    """
    if loss == "bce":
        pos = (hidden * table(target)).sum(-1)
        neg = (hidden * table(negatives)).sum(-1)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg))
    if loss == "sampled":
        return sampled_softmax_nll(hidden, table, target, negatives, log_q=log_q)
    if loss == "ce":  # items 1..V only: padding never enters the softmax
        return softmax_nll(hidden, table.weight[1:], (target - 1).clamp_min(0))
    raise ValueError(f"loss must be one of ('bce', 'ce', 'sampled'), got {loss!r}")
