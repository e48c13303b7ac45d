"""Evaluation protocols: full ranking and sampled ranking, in user chunks.

Scores are produced and ranked one chunk of users at a time, so memory holds at most
one [chunk_size, items] score block, never users x items. Metrics come from a rank
histogram (:class:`~seqrec.eval.metrics.RankAccumulator`) and do not depend on
``chunk_size``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..ops.rank_topk import rank_sampled, rank_topk
from .metrics import LIST_METRICS, RankAccumulator, TopKAccumulator, _check_extra

__all__ = ["Protocol", "evaluate_full_ranking", "evaluate_sampled"]

TIE_RULE = "ties count against the model"


@dataclass(frozen=True)
class Protocol:
    """How a result was obtained; print it with every result (``describe``/``report``).

    Attributes:
        split: the data split, e.g. "leave-one-out" (last item test, second last valid).
        ranking: "full" (the target against every item) or "sampled" (the target
            against ``num_negatives`` sampled items).
        num_negatives: sampled protocol only: negatives per user (e.g. 99).
        seed: sampled protocol only: the seed the negatives were drawn with.
        exclude_history: full ranking: the user's history items are not ranked (the
            target always is). Sampled: negatives were drawn outside the history.
        tie_rule: how equal scores are ranked; seqrec's operators implement only
            "ties count against the model".
        max_len: inputs keep the most recent ``max_len`` items (None: not stated).
        negatives: sampled protocol only: how the negatives were drawn, "uniform"
            (among the user's unseen items) or "popularity" (proportional to training
            popularity among them); named in the card when not uniform.
    """

    split: str = "leave-one-out"
    ranking: str = "full"
    num_negatives: int | None = None
    seed: int | None = None
    exclude_history: bool = True
    tie_rule: str = TIE_RULE
    max_len: int | None = None
    negatives: str = "uniform"

    def __post_init__(self):
        if self.negatives not in ("uniform", "popularity"):
            raise ValueError(f"Protocol.negatives must be 'uniform' or 'popularity', got {self.negatives!r}")
        if self.ranking not in ("full", "sampled"):
            raise ValueError(f"Protocol.ranking must be 'full' or 'sampled', got {self.ranking!r}")
        if self.ranking == "sampled" and (self.num_negatives is None or self.num_negatives < 1):
            raise ValueError(f"Protocol.num_negatives must be >= 1 for sampled ranking, got {self.num_negatives!r}")
        if self.ranking == "full" and self.num_negatives not in (None, 0):
            raise ValueError(f"Protocol.num_negatives applies only to ranking='sampled' (None or 0 for 'full'), "
                             f"got {self.num_negatives!r}")
        if self.tie_rule != TIE_RULE:
            raise ValueError(f"Protocol.tie_rule: only {TIE_RULE!r} is implemented, got {self.tie_rule!r}")

    def describe(self) -> str:
        """One line, e.g. 'split=leave-one-out; ranking=full (target vs all items); ...'."""
        if self.ranking == "full":
            ranking = "full (target vs all items)"
            history = ("history items excluded (target kept)" if self.exclude_history
                       else "history items NOT excluded")
        else:
            seed = "unseeded" if self.seed is None else f"seed {self.seed}"
            kind = "" if self.negatives == "uniform" else f"{self.negatives}-sampled "
            ranking = f"sampled (target vs {self.num_negatives} {kind}negatives, {seed})"
            history = ("negatives drawn outside the history" if self.exclude_history
                       else "negatives may include history items")
        split = self.split if self.max_len is None else f"{self.split} (inputs: last {self.max_len} items)"
        return f"split={split}; ranking={ranking}; {history}; tie rule: {self.tie_rule}"

    def report(self, metrics: dict[str, float], digits: int = 4) -> str:
        """The metrics on one line followed by the protocol, e.g. for printing or logs."""
        values = " ".join(f"{name} {value:.{digits}f}" for name, value in metrics.items())
        return f"{values} | {self.describe()}"


def _as_index(t, name: str) -> Tensor:
    t = torch.as_tensor(t)
    if t.dtype != torch.int64:
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"argument '{name}' must hold integers, got dtype {t.dtype}")
        t = t.long()
    return t


def _check_chunk_size(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


@torch.no_grad()
def evaluate_full_ranking(
    score_fn: Callable[[Tensor], Tensor],
    target: Tensor,
    history_indptr: Tensor,
    history_items: Tensor,
    ks: Sequence[int] = (5, 10, 20),
    chunk_size: int = 1024,
    exclude_history: bool = True,
    backend: str | None = None,
    *,
    users: Tensor | None = None,
    topk: int = 0,
    metrics: Sequence[str] = (),
) -> tuple[dict[str, float], Tensor] | tuple[dict[str, float], Tensor, Tensor]:
    """Full-ranking evaluation of U users, ``chunk_size`` users at a time.

    Args:
        score_fn: ``score_fn(rows) -> scores [len(rows), I]`` for the int64 row indices
            ``rows = arange(lo, hi)`` (or ``users[lo:hi]`` when ``users`` is given); any
            float dtype, any device the backend supports. Column 0 is the padding item.
        target: [U] int64, each user's held-out item in 1..I-1.
        history_indptr, history_items: CSR of what each user has seen, row u:
            ``history_items[history_indptr[u]:history_indptr[u+1]]``;
            ``history_indptr[0]`` may be nonzero (a slice of a bigger CSR).
        ks: cut-offs of HR@K / NDCG@K.
        chunk_size: users per score block; only memory depends on it, not the result.
        exclude_history: exclusion rule of :func:`seqrec.ops.rank_topk` (history items
            are not ranked, the target always is).
        backend: None, "seqrec" or "reference".
        users: optional [U] tensor passed to ``score_fn`` chunk by chunk instead of the
            row indices (e.g. user ids).
        topk: when > 0, also return each user's top-``topk`` list ([U, topk] int64,
            computed in the same pass).
        metrics: opt-in metric families beyond HR/NDCG/MRR, any of "Precision",
            "MAP", "Coverage", "Gini" (:mod:`seqrec.eval.metrics`), computed in the
            same ranking pass (Coverage and Gini from the top-``max(ks)`` lists that
            ``rank_topk`` returns); their keys follow the default ones, which keep
            their values.

    Returns:
        ``(metrics, ranks)``: the dict of :func:`metrics_from_ranks` and the [U] int64
        0-based ranks (CPU); ``(metrics, ranks, topk_items)`` when ``topk > 0``.
        Report them with ``Protocol(ranking="full", exclude_history=...)``.
    """
    chunk_size = _check_chunk_size(chunk_size)
    target = _as_index(target, "target")
    history_indptr = _as_index(history_indptr, "history_indptr")
    history_items = _as_index(history_items, "history_items")
    if target.dim() != 1:
        raise ValueError(f"argument 'target' must be 1-dimensional [users], got shape {tuple(target.shape)}")
    num_users = target.shape[0]
    if users is not None:
        users = torch.as_tensor(users)
        if users.shape[0] != num_users:
            raise ValueError(f"argument 'users' must have {num_users} entries (one per target), got {users.shape[0]}")
    if history_indptr.dim() != 1 or history_indptr.shape[0] != num_users + 1:
        raise ValueError(f"argument 'history_indptr' must have shape [{num_users + 1}] (users + 1), "
                         f"got {tuple(history_indptr.shape)}")
    if topk < 0:
        raise ValueError(f"topk must be >= 0, got {topk}")
    extra = _check_extra(metrics)
    acc = RankAccumulator(ks, extra)
    lists_acc = None  # counts of the items in the top-K lists, made at the first chunk
    need_lists = any(e in LIST_METRICS for e in extra)
    list_k = max(topk, max(acc.ks)) if need_lists else topk
    ranks, lists = [], []
    for lo in range(0, num_users, chunk_size):
        hi = min(lo + chunk_size, num_users)
        scores = score_fn(torch.arange(lo, hi) if users is None else users[lo:hi])
        if scores.dim() != 2 or scores.shape[0] != hi - lo:
            raise ValueError(f"score_fn must return [{hi - lo}, num_items] scores for {hi - lo} users, "
                             f"got shape {tuple(scores.shape)}")
        # Rebase the CSR slice of this chunk so that its row pointer starts at 0.
        ptr = history_indptr[lo:hi + 1]
        start, stop = int(ptr[0]), int(ptr[-1])
        dev = scores.device
        items_chunk = history_items[start:stop].to(dev)
        top, rank = rank_topk(scores, (ptr - start).to(dev), items_chunk, target[lo:hi].to(dev), list_k,
                              exclude_history, backend=backend)
        rank = rank.cpu()
        acc.add(rank)
        ranks.append(rank)
        if need_lists:
            if lists_acc is None:
                lists_acc = TopKAccumulator(acc.ks, scores.shape[1] - 1, extra)
            lists_acc.add(top.cpu())
        if topk:
            lists.append(top[:, :topk].cpu())
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    result = acc.compute()
    if lists_acc is not None:
        result.update(lists_acc.compute())
    if topk:
        return result, all_ranks, torch.cat(lists)
    return result, all_ranks


@torch.no_grad()
def evaluate_sampled(
    score_fn: Callable[..., Tensor],
    candidates: Tensor | int,
    ks: Sequence[int] = (5, 10, 20),
    chunk_size: int = 1024,
    backend: str | None = None,
    *,
    metrics: Sequence[str] = (),
) -> tuple[dict[str, float], Tensor]:
    """Sampled-ranking evaluation: each user's target against its stored negatives.

    Args:
        score_fn: the scores of each user's candidates, [hi - lo, 1+N], column 0 the
            target's. Called as ``score_fn(rows, candidates[lo:hi])`` when
            ``candidates`` is a tensor, as ``score_fn(rows)`` when it is a count (the
            function then knows the candidates); ``rows = arange(lo, hi)``.
        candidates: [U, 1+N] int64 item ids (column 0 the target, columns 1..N the
            negatives, drawn outside the user's history, seeded: record the seed in the
            :class:`Protocol`), or the number of users U.
        ks, chunk_size, backend: as in :func:`evaluate_full_ranking`.
        metrics: opt-in "Precision", "MAP" (ranks among the candidates); "Coverage"
            and "Gini" describe full-catalogue lists and are refused here.

    Returns:
        ``(metrics, ranks)``, ranks [U] int64 = number of negatives scoring >= the
        target (ties count against the model). Report them with
        ``Protocol(ranking="sampled", num_negatives=N, seed=...)``.
    """
    chunk_size = _check_chunk_size(chunk_size)
    if isinstance(candidates, numbers.Integral):
        candidates = int(candidates)
        cand, num_users, width = None, candidates, None
        if num_users < 0:
            raise ValueError(f"argument 'candidates' as a user count must be >= 0, got {num_users}")
    else:
        cand = _as_index(candidates, "candidates")
        if cand.dim() != 2 or cand.shape[1] < 1:
            raise ValueError(f"argument 'candidates' must have shape [users, 1 + negatives], got {tuple(cand.shape)}")
        num_users, width = cand.shape
    extra = _check_extra(metrics)
    if any(e in LIST_METRICS for e in extra):
        raise ValueError(f"metrics {[e for e in extra if e in LIST_METRICS]} describe full-ranking top-K lists; "
                         "use evaluate_full_ranking")
    acc = RankAccumulator(ks, extra)
    ranks = []
    for lo in range(0, num_users, chunk_size):
        hi = min(lo + chunk_size, num_users)
        rows = torch.arange(lo, hi)
        scores = score_fn(rows) if cand is None else score_fn(rows, cand[lo:hi])
        if scores.dim() != 2 or scores.shape[0] != hi - lo or (width is not None and scores.shape[1] != width):
            raise ValueError(f"score_fn must return [{hi - lo}, {width or '1 + negatives'}] scores, "
                             f"got shape {tuple(scores.shape)}")
        rank = rank_sampled(scores, backend=backend).cpu()
        acc.add(rank)
        ranks.append(rank)
    all_ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return acc.compute(), all_ranks
