"""``rank_topk`` / ``rank_sampled``: the evaluator's operators (``torch.ops.seqrec.*``).

Both return integers only, so they are non-differentiable by construction: no autograd
formula is registered, their outputs never require grad, and scores that require grad
are accepted as they are (nothing is saved for a backward).
"""
from __future__ import annotations

import torch
from torch import Tensor

import seqrec._loader  # noqa: F401  (registers torch.ops.seqrec.*)

from . import reference
from ._autograd import register_loop_vmap
from ._checks import check_same_device
from ._registry import register_cuda_reference
from .backend import get_backend

__all__ = ["rank_topk", "rank_sampled"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.library.register_fake("seqrec::rank_topk")
def _rank_topk_fake(scores, history_indptr, history_items, target, k, exclude_history=True):
    check_same_device("rank_topk", scores=scores, history_indptr=history_indptr,
                      history_items=history_items, target=target)
    torch._check(scores.dim() == 2, lambda: f"rank_topk: argument 'scores' must be 2-dimensional, got {scores.dim()}")
    torch._check(scores.dtype in _FLOAT_DTYPES, lambda: f"rank_topk: argument 'scores' has dtype {scores.dtype}")
    for name, t in (("history_indptr", history_indptr), ("history_items", history_items), ("target", target)):
        torch._check(t.dtype == torch.int64, lambda: f"rank_topk: argument '{name}' must have dtype int64")
        torch._check(t.dim() == 1, lambda: f"rank_topk: argument '{name}' must be 1-dimensional")
    num_users = scores.shape[0]
    torch._check(target.shape[0] == num_users, lambda: "rank_topk: argument 'target' must have one entry per row")
    torch._check(history_indptr.shape[0] == num_users + 1,
                 lambda: "rank_topk: argument 'history_indptr' must have rows + 1 entries")
    torch._check(k >= 0, lambda: f"rank_topk: argument 'k' must be >= 0, got {k}")
    # k capped at the I - 1 candidate items, as the kernel does before allocating.
    kk = torch.sym_max(torch.sym_min(k, scores.shape[1] - 1), 0)
    topk = scores.new_empty((num_users, kk), dtype=torch.int64)
    rank = scores.new_empty((num_users,), dtype=torch.int64)
    return topk, rank


@torch.library.register_fake("seqrec::rank_sampled")
def _rank_sampled_fake(scores):
    torch._check(scores.dim() == 2, lambda: f"rank_sampled: argument 'scores' must be 2-dimensional, got {scores.dim()}")
    torch._check(scores.dtype in _FLOAT_DTYPES, lambda: f"rank_sampled: argument 'scores' has dtype {scores.dtype}")
    torch._check(scores.shape[1] >= 1, lambda: "rank_sampled: argument 'scores' needs the target column")
    return scores.new_empty((scores.shape[0],), dtype=torch.int64)


def rank_topk(scores: Tensor, history_indptr: Tensor, history_items: Tensor, target: Tensor, k: int,
              exclude_history: bool = True, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Top-k lists and target ranks of a block of full-ranking scores, in one pass.

    Args:
        scores: [U, I] float32/float64/float16/bfloat16, any strides. Column 0 is the
            padding item and is never ranked; the candidates are items 1..I-1.
        history_indptr: [U+1] int64 CSR row pointer local to this block:
            ``history_indptr[0] == 0``, non-decreasing, ``history_indptr[U] == nnz``.
        history_items: [nnz] int64 item ids in 0..I-1; row u's history is
            ``history_items[history_indptr[u]:history_indptr[u+1]]`` (order and
            duplicates do not matter; 0 is allowed and ignored).
        target: [U] int64 item ids in 1..I-1.
        k: length of the lists, >= 0 (0 computes only the ranks). Capped at I - 1, the
            number of candidate items, before anything is allocated: a list cannot be
            longer, so ``k = 10**9`` returns the [U, I-1] full order, not an OOM.
        exclude_history: exclusion rule. When True, the user's history items are not
            candidates, EXCEPT the target, which is always ranked. When False every
            item 1..I-1 is a candidate.
        backend: None (process default), "seqrec" or "reference".

    Returns:
        topk_items: [U, min(k, I-1)] int64, the k best candidates, best first: score descending,
            ties broken by the lower item id; excluded items never appear; padded with 0
            when the user has fewer than k candidates. The target appears when it is
            among the best.
        rank: [U] int64, the 0-based rank of the target among the candidates. Tie rule:
            ties count against the model, i.e. ``rank = #{candidate c != target :
            score[c] >= score[target]}``; a constant score gives the worst rank.

    Raises RuntimeError on NaN in columns 1..I-1 (NaN has no rank), on a wrong dtype or
    shape, a target outside 1..I-1, a history item outside 0..I-1, or a malformed
    ``history_indptr``; messages name the argument.
    """
    if get_backend(backend) == "reference":
        return reference.rank_topk(scores, history_indptr, history_items, target, k, exclude_history)
    return torch.ops.seqrec.rank_topk.default(scores, history_indptr, history_items, target, k, exclude_history)


def rank_sampled(scores: Tensor, backend: str | None = None) -> Tensor:
    """Ranks of the target against sampled negatives (the sampled protocol).

    Args:
        scores: [U, 1+N] float32/float64/float16/bfloat16, any strides; column 0 is the
            target's score, columns 1..N the negatives' (sampled outside the history, so
            nothing is excluded here).
        backend: None (process default), "seqrec" or "reference".

    Returns:
        rank: [U] int64, ``#{j in 1..N : scores[u, j] >= scores[u, 0]}``: ties count
        against the model. Raises RuntimeError on NaN.
    """
    if get_backend(backend) == "reference":
        return reference.rank_sampled(scores)
    return torch.ops.seqrec.rank_sampled.default(scores)


register_cuda_reference("rank_topk", reference.rank_topk)
register_cuda_reference("rank_sampled", reference.rank_sampled)
register_loop_vmap("rank_topk")
register_loop_vmap("rank_sampled")
