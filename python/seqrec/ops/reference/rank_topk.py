"""Plain-PyTorch reference of ``rank_topk`` and ``rank_sampled``.

Same signatures and semantics as :mod:`seqrec.ops.rank_topk` (see its docstrings for
the rules), written to be obviously right rather than fast: it materialises a
[users, items] candidate mask and sorts whole rows. ``torch.topk`` is not used for the
list because it does not define which of several tied items comes first; two stable
sorts give the documented order (score descending, then lower item id).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_same_device

__all__ = ["rank_topk", "rank_sampled"]


def _check_no_nan(scores: Tensor, op: str) -> None:
    if bool(torch.isnan(scores).any()):
        row = int(torch.isnan(scores).any(dim=1).nonzero()[0, 0])
        raise RuntimeError(f"{op}: argument 'scores' holds NaN in row {row}; NaN has no rank, fix the scores")


def _check_index_args(scores: Tensor, indptr: Tensor, items: Tensor, target: Tensor, k: int) -> None:
    op = "rank_topk"
    if scores.dim() != 2:
        raise RuntimeError(f"{op}: argument 'scores' must be 2-dimensional [users, items], got shape "
                           f"{tuple(scores.shape)}")
    for name, t in (("history_indptr", indptr), ("history_items", items), ("target", target)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise RuntimeError(f"{op}: argument '{name}' must be a 1-dimensional int64 tensor, got {t.dtype} "
                               f"{tuple(t.shape)}")
    num_users, num_items = scores.shape
    if k < 0:
        raise RuntimeError(f"{op}: argument 'k' must be >= 0, got {k}")
    if target.shape[0] != num_users:
        raise RuntimeError(f"{op}: argument 'target' must have shape [{num_users}] (one per row of 'scores')")
    if indptr.shape[0] != num_users + 1:
        raise RuntimeError(f"{op}: argument 'history_indptr' must have shape [{num_users + 1}] (rows of 'scores' + 1)")
    if int(indptr[0]) != 0 or bool((indptr[1:] < indptr[:-1]).any()) or int(indptr[-1]) != items.shape[0]:
        raise RuntimeError(f"{op}: argument 'history_indptr' must start at 0, be non-decreasing and end at "
                           f"len(history_items) = {items.shape[0]}")
    if items.numel() and bool(((items < 0) | (items >= num_items)).any()):
        raise RuntimeError(f"{op}: argument 'history_items' must hold item ids in [0, {num_items})")
    if target.numel() and bool(((target < 1) | (target >= num_items)).any()):
        raise RuntimeError(f"{op}: argument 'target' must hold item ids in [1, {num_items}) (0 is padding)")


def candidate_mask(num_items: int, history_indptr: Tensor, history_items: Tensor, target: Tensor,
                   exclude_history: bool = True) -> Tensor:
    """[U, I] bool: True where an item is ranked for that user (see ``rank_topk``)."""
    num_users = target.shape[0]
    cand = torch.ones(num_users, num_items, dtype=torch.bool, device=target.device)
    cand[:, 0] = False  # padding is never ranked
    if exclude_history:
        counts = history_indptr[1:] - history_indptr[:-1]
        rows = torch.repeat_interleave(torch.arange(num_users, device=target.device), counts)
        cand[rows, history_items] = False  # scatter: duplicates are harmless
    cand.scatter_(1, target[:, None], True)  # the target is always ranked
    return cand


def rank_topk(scores: Tensor, history_indptr: Tensor, history_items: Tensor, target: Tensor, k: int,
              exclude_history: bool = True) -> tuple[Tensor, Tensor]:
    """Reference of :func:`seqrec.ops.rank_topk`, with the kernel's checks (the same
    RuntimeErrors, so that a bad input fails on both backends alike)."""
    check_same_device("rank_topk", scores=scores, history_indptr=history_indptr,
                      history_items=history_items, target=target)
    _check_index_args(scores, history_indptr, history_items, target, k)
    scores_ranked = scores[:, 1:]
    _check_no_nan(scores_ranked, "rank_topk")
    num_users, num_items = scores.shape
    cand = candidate_mask(num_items, history_indptr, history_items, target, exclude_history)
    target_score = scores.gather(1, target[:, None])
    # Ties count against the model: every other candidate scoring >= the target is above it.
    rank = ((scores >= target_score) & cand).sum(dim=1) - 1

    # Order: candidates first, then score descending, then lower item id. Sort by the
    # minor key first; stable sorts keep it within equal major keys.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    by_cand = torch.sort(cand.gather(1, order).to(torch.uint8), dim=1, descending=True, stable=True).indices
    order = order.gather(1, by_cand)
    k = max(min(k, num_items - 1), 0)  # capped at the I - 1 candidates, as the kernel
    topk = order[:, :k].clone()
    n_cand = cand.sum(dim=1, keepdim=True)
    topk[torch.arange(k, device=scores.device)[None, :] >= n_cand] = 0
    return topk, rank


def rank_sampled(scores: Tensor) -> Tensor:
    """Reference of :func:`seqrec.ops.rank_sampled`."""
    check_same_device("rank_sampled", scores=scores)
    _check_no_nan(scores, "rank_sampled")
    return (scores[:, 1:] >= scores[:, :1]).sum(dim=1)
