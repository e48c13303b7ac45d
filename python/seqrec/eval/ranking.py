"""Evaluation protocols: full ranking and sampled ranking, in blocks of users and items.

Scores are produced and ranked one block at a time, and each block is freed before the
next is scored, so memory holds one [users, items] block, never users x catalogue. The
block sizes come from a memory budget (:mod:`seqrec.eval.memory`) or are given; a row
too wide for the budget is split into item blocks with a running top-k merge. Metrics
come from a rank histogram (:class:`~seqrec.eval.metrics.RankAccumulator`), so they do
not depend on the block sizes; under ``torch.distributed`` the users are sharded over
the ranks and the histograms summed exactly (:mod:`seqrec.eval.distributed`), so they
do not depend on the world size either, bit for bit.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

import torch.distributed as dist

from ..ops.rank_topk import rank_sampled, rank_topk
from .distributed import all_reduce_lists, all_reduce_ranks, check_same, gather_rows, resolve_group, shard_range
from .memory import default_eval_memory, parse_memory, plan_chunks
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


def _check_chunk_size(chunk_size: int | None, name: str = "chunk_size") -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or int(chunk_size) < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {chunk_size!r}")
    return int(chunk_size)


class _Shard:
    """The users this process evaluates (all of them, or its rank's shard) and the
    merge of the per-rank results (see :mod:`seqrec.eval.distributed`)."""

    def __init__(self, process_group, num_users: int, checked: dict[str, int]):
        self.group = resolve_group(process_group)
        if self.group is None:
            self.lo, self.hi = 0, num_users
            return
        check_same([num_users, *checked.values()], ["users", *checked], self.group)
        self.lo, self.hi = shard_range(num_users, dist.get_rank(self.group), dist.get_world_size(self.group))

    def metrics(self, acc: RankAccumulator, lists: TopKAccumulator | None = None, num_items: int | None = None,
                extra: tuple[str, ...] = ()) -> dict[str, float]:
        """The metrics of every rank's users; ``lists``: this rank's top-K list counts
        when list metrics were asked for (None where it ranked nobody)."""
        if self.group is not None:
            acc = all_reduce_ranks(acc, self.group)
        result = acc.compute()
        if any(e in LIST_METRICS for e in extra):
            if self.group is not None:
                lists = all_reduce_lists(lists, acc.ks, num_items, extra, self.group)
            if lists is not None:
                result.update(lists.compute())
        return result

    def rows(self, parts: list[Tensor], empty: Tensor, gather: bool) -> Tensor:
        local = torch.cat(parts) if parts else empty
        return gather_rows(local, self.group) if self.group is not None and gather else local


def _budget(memory, chunk_size: int | None) -> int | None:
    # An explicit chunk size without an explicit budget keeps its old meaning (whole
    # rows of chunk_size users); otherwise the budget is the given one or the machine's.
    if memory is not None:
        return parse_memory(memory, "memory")
    return None if chunk_size is not None else default_eval_memory("cpu")


def _check_block(scores, rows: int, width: int | None, what: str) -> Tensor:
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != rows or (
            width is not None and scores.shape[1] != width):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"score_fn must return [{rows}, {width if width is not None else 'num_items'}] scores "
                         f"for {what}, got {shape}")
    if not scores.dtype.is_floating_point:
        raise ValueError(f"score_fn must return floating-point scores for {what}, got dtype {scores.dtype}")
    return scores


def _check_ids(num_items: int, target: Tensor, indptr: Tensor, items: Tensor) -> None:
    # The item-block path does not go through rank_topk, whose checks these repeat.
    if target.numel() and (int(target.min()) < 1 or int(target.max()) >= num_items):
        raise ValueError(f"argument 'target' must hold item ids in 1..{num_items - 1}, "
                         f"got {int(target.min())}..{int(target.max())}")
    if indptr.numel() > 1 and bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("argument 'history_indptr' must be non-decreasing")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= num_items):
        raise ValueError(f"argument 'history_items' must hold item ids in 0..{num_items - 1}, "
                         f"got {int(items.min())}..{int(items.max())}")


_LOW32 = (1 << 32) - 1
_NO_ITEM = torch.iinfo(torch.int64).min


def _order_keys(values: Tensor, items: Tensor) -> Tensor:
    """int64 keys whose descending order is rank_topk's list order: score descending,
    then the lower item id. ``values`` are float32/float16/bfloat16 scores of ``items``
    (int64, broadcastable). The high 32 bits are an order-preserving integer image of
    the float32 score (-0.0 and +0.0 map to the same key, as they compare equal), the
    low 32 bits ``2**32 - 1 - item``: keys are unique, so ``topk`` of keys has no ties."""
    if values.dtype == torch.float64:
        raise ValueError("item-block evaluation makes top-k lists of float32/float16/bfloat16 scores; cast "
                         "float64 scores with .float(), or give a budget that holds whole rows")
    bits = values.float().contiguous().view(torch.int32).to(torch.int64)  # sign-extended
    negative = bits < 0
    bits &= 0x7FFFFFFF
    bits = torch.where(negative, -bits, bits)  # sign-magnitude -> two's complement: float order
    bits <<= 32
    bits += _LOW32 - items
    return bits


def _block_topk(scores: Tensor, ex_rows: Tensor, ex_cols: Tensor, lo: int, k: int) -> Tensor:
    """Order keys of the k best candidates of a block (items ``lo, lo+1, ...``), [B, <=k];
    ``(ex_rows, ex_cols)``: the block's excluded (row, column) pairs, column 0 included
    when it is the padding item.

    ``torch.topk`` on a copy of the scores with the excluded items at -inf finds them,
    except in rows where the k-th best value is tied with a candidate left out (topk does
    not say which of equal items it keeps) or is -inf (then it cannot tell candidates
    from excluded items): those rows get exact keys over the whole block."""
    kk = min(k, scores.shape[1])
    masked = scores.clone()
    masked[ex_rows, ex_cols] = float("-inf")
    values, cols = masked.topk(kk, dim=1)
    kth = values[:, -1:]
    # more items at or above the k-th value than were taken: a tie left out
    inexact = torch.count_nonzero(masked >= kth, dim=1) > kk
    del masked
    inexact |= torch.isinf(kth[:, 0]) & (kth[:, 0] < 0)
    keys = _order_keys(values, cols + lo)
    rows = inexact.nonzero().squeeze(1)
    if rows.numel():
        exact = _order_keys(scores[rows], torch.arange(lo, lo + scores.shape[1], device=scores.device))
        where = torch.full((scores.shape[0],), -1, dtype=torch.int64, device=scores.device)
        where[rows] = torch.arange(rows.shape[0], device=scores.device)
        hit = where[ex_rows] >= 0
        exact[where[ex_rows[hit]], ex_cols[hit]] = _NO_ITEM
        keys[rows] = exact.topk(kk, dim=1).values
    return keys


def _merge_topk(best: Tensor | None, scores: Tensor, ex_rows: Tensor, ex_cols: Tensor, lo: int, k: int) -> Tensor:
    """The k largest order keys among ``best`` (the lists so far, [B, <=k]) and the
    block's candidates: the top k of a union is within the union of the parts' top k,
    as the keys order items totally."""
    top = _block_topk(scores, ex_rows, ex_cols, lo, k)
    if best is None:
        return top
    top = torch.cat([best, top], dim=1)
    return top.topk(min(k, top.shape[1]), dim=1).values


def _items_of_keys(keys: Tensor, k: int) -> Tensor:
    keys = keys.sort(dim=1, descending=True).values  # topk leaves equal scores in any order
    items = torch.where(keys == _NO_ITEM, 0, _LOW32 - (keys & _LOW32))
    if items.shape[1] < k:  # a catalogue with fewer than k candidates: padded with 0
        items = torch.cat([items, items.new_zeros(items.shape[0], k - items.shape[1])], dim=1)
    return items


def _excluded_pairs(target: Tensor, indptr: Tensor, items: Tensor, exclude_history: bool) -> tuple[Tensor, Tensor]:
    """(rows, items) that are not candidates: the padding item of every row, and with
    ``exclude_history`` the rows' distinct history items other than their target."""
    num_rows = target.shape[0]
    pad_rows = torch.arange(num_rows, device=target.device)
    if not exclude_history or items.numel() == 0:
        return pad_rows, torch.zeros_like(pad_rows)
    rows = torch.repeat_interleave(pad_rows, indptr[1:] - indptr[:-1])
    keep = (items != 0) & (items != target[rows])
    num_items = int(items.max()) + 1
    pairs = torch.unique(rows[keep] * num_items + items[keep])  # duplicates would count twice
    return torch.cat([pad_rows, pairs // num_items]), torch.cat([torch.zeros_like(pad_rows), pairs % num_items])


def _rank_item_blocks(score_fn, rows: Tensor, target: Tensor, indptr: Tensor, items: Tensor, num_items: int,
                      block: int, k: int, exclude_history: bool, first_row: int) -> tuple[Tensor, Tensor]:
    """rank_topk's lists and ranks of one chunk of users, from item blocks of ``block``
    columns scored one at a time by ``score_fn(rows, item_lo, item_hi)``.

    The target's score is taken once, from the block that holds it (each user is scored
    once more, on that block only, before the pass over the blocks). Each block then
    adds the number of its items scoring >= that score, less the excluded items among
    them (padding, history) and the target itself (ties count against the model, the
    target not against itself), and merges its best candidates into the running top-k
    by unique order keys. ``indptr`` is local (starts at 0)."""
    num_rows = target.shape[0]
    t_block = target // block
    t_score = None
    for b in torch.unique(t_block).tolist():
        sel = (t_block == b).nonzero().squeeze(1)
        lo, hi = b * block, min((b + 1) * block, num_items)
        scores = _check_block(score_fn(rows[sel], lo, hi), sel.shape[0], hi - lo, f"items [{lo}, {hi})")
        if t_score is None:
            t_score = scores.new_empty(num_rows)
        t_score[sel.to(scores.device)] = scores.gather(1, (target[sel] - lo).to(scores.device)[:, None]).squeeze(1)
        del scores
    if t_score is None:  # no users
        return torch.zeros(0, k, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    dev = t_score.device
    target_d = target.to(dev)
    ex_rows, ex_items = _excluded_pairs(target_d, indptr.to(dev), items.to(dev), exclude_history)
    rank = torch.zeros(num_rows, dtype=torch.int64, device=dev)
    best = None
    for lo in range(0, num_items, block):
        hi = min(lo + block, num_items)
        scores = _check_block(score_fn(rows, lo, hi), num_rows, hi - lo, f"items [{lo}, {hi})")
        ranked = scores[:, 1:] if lo == 0 else scores  # column 0 (padding) is never ranked
        # A row sum is NaN when the row holds a NaN (or both infinities: then look closer).
        if bool(torch.isnan(ranked.sum(dim=1)).any()):
            nan = torch.isnan(ranked).any(dim=1)
            if bool(nan.any()):
                row = first_row + int(nan.nonzero()[0, 0])
                raise RuntimeError(f"rank_topk: argument 'scores' holds NaN in row {row}; NaN has no rank, "
                                   "fix the scores")
        del ranked
        inside = (ex_items >= lo) & (ex_items < hi)
        b_rows, b_cols = ex_rows[inside], ex_items[inside] - lo
        here = ((target_d >= lo) & (target_d < hi)).nonzero().squeeze(1)
        rank += torch.count_nonzero(scores >= t_score[:, None], dim=1)
        rank -= torch.zeros_like(rank).index_add_(0, b_rows, (scores[b_rows, b_cols] >= t_score[b_rows]).long())
        rank[here] -= (scores[here, target_d[here] - lo] >= t_score[here]).long()
        if k:
            best = _merge_topk(best, scores, b_rows, b_cols, lo, k)
        del scores
    top = _items_of_keys(best, k) if k else torch.zeros(num_rows, 0, dtype=torch.int64, device=dev)
    return top, rank


@torch.no_grad()
def evaluate_full_ranking(
    score_fn: Callable[..., Tensor],
    target: Tensor,
    history_indptr: Tensor,
    history_items: Tensor,
    ks: Sequence[int] = (5, 10, 20),
    chunk_size: int | None = None,
    exclude_history: bool = True,
    backend: str | None = None,
    *,
    users: Tensor | None = None,
    topk: int = 0,
    num_items: int | None = None,
    item_range: bool = False,
    memory: int | str | None = None,
    item_chunk_size: int | None = None,
    process_group=None,
    gather: bool = True,
    metrics: Sequence[str] = (),
) -> tuple[dict[str, float], Tensor] | tuple[dict[str, float], Tensor, Tensor]:
    """Full-ranking evaluation of U users in blocks of users (and, when needed, of items).

    Args:
        score_fn: ``score_fn(rows) -> scores [len(rows), I]`` for the int64 row indices
            ``rows`` (global: ``arange(lo, hi)``, or ``users[lo:hi]`` when ``users`` is
            given); any float dtype, any device the backend supports. Column 0 is the
            padding item. With ``item_range=True`` it is called as ``score_fn(rows,
            item_lo, item_hi) -> [len(rows), item_hi - item_lo]``, the scores of items
            ``item_lo..item_hi-1``, which lets the evaluation split rows into item
            blocks; such a function must give each (row, item) the same score whatever
            the range and the rows it is called with.
        target: [U] int64, each user's held-out item in 1..I-1.
        history_indptr, history_items: CSR of what each user has seen, row u:
            ``history_items[history_indptr[u]:history_indptr[u+1]]``;
            ``history_indptr[0]`` may be nonzero (a slice of a bigger CSR).
        ks: cut-offs of HR@K / NDCG@K.
        chunk_size: users per score block (None: from the memory budget). Only memory
            depends on it, never the result.
        exclude_history: exclusion rule of :func:`seqrec.ops.rank_topk` (history items
            are not ranked, the target always is).
        backend: None, "seqrec" or "reference" (the whole-row path's ``rank_topk``).
        users: optional [U] tensor passed to ``score_fn`` chunk by chunk instead of the
            row indices (e.g. user ids).
        topk: when > 0, also return each user's top-``topk`` list ([U, topk] int64,
            computed in the same pass).
        num_items: I, the score columns (padding included). Required with
            ``item_range``; otherwise optional (learnt from the first block, which then
            holds one user).
        item_range: ``score_fn`` accepts an item range (see above).
        memory: budget of the score blocks, bytes or a string such as ``"2GiB"`` (see
            :mod:`seqrec.eval.memory` for what it covers). None: the machine's
            (:func:`~seqrec.eval.memory.default_eval_memory`) unless ``chunk_size`` is
            given, in which case whole rows of ``chunk_size`` users are scored as asked.
        item_chunk_size: items per block (needs ``item_range``); None: whole rows when
            they fit the budget, else blocks sized from it.
        process_group: shard the users over a ``torch.distributed`` group. None: the
            default group when torch.distributed is initialised with world size > 1,
            else this process alone; ``"local"``: this process alone, evaluating every
            user; a ProcessGroup: that group. Every rank of the group must call with
            the same arguments; the metrics are exactly those of one process.
        gather: sharded only: return the ranks (and lists) of every user on every rank
            (True), or only this rank's contiguous shard of users (False).
        metrics: opt-in metric families beyond HR/NDCG/MRR, any of "Precision",
            "MAP", "Coverage", "Gini" (:mod:`seqrec.eval.metrics`), computed in the
            same ranking pass (Coverage and Gini from the top-``max(ks)`` lists, whose
            item counts, [len(ks), I] int64, are kept beside the budget); their keys
            follow the default ones, which keep their values.

    Precedence of the sizes: ``chunk_size`` and ``item_chunk_size``, when given, are
    used as they are; the budget sizes the others (:func:`~seqrec.eval.memory.plan_chunks`).
    Items are split into blocks only when ``item_range`` and even the chosen users'
    whole rows do not fit (or ``item_chunk_size`` says so); the lists and ranks are then
    those of ``rank_topk`` on the whole rows (same tie rules), from float32/16 scores.

    Returns:
        ``(metrics, ranks)``: the dict of :func:`metrics_from_ranks` and the [U] int64
        0-based ranks (CPU); ``(metrics, ranks, topk_items)`` when ``topk > 0``.
        Report them with ``Protocol(ranking="full", exclude_history=...)``.
    """
    chunk_size = _check_chunk_size(chunk_size)
    item_chunk_size = _check_chunk_size(item_chunk_size, "item_chunk_size")
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
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 0:
        raise ValueError(f"topk must be an int >= 0, got {topk!r}")
    if num_items is not None and (isinstance(num_items, bool) or not isinstance(num_items, numbers.Integral)
                                  or num_items < 2):
        raise ValueError(f"num_items must be None or an int >= 2 (padding + one item), got {num_items!r}")
    if item_range and num_items is None:
        raise ValueError("item_range=True needs num_items (the width of a whole row of scores)")
    if item_chunk_size is not None and not item_range:
        raise ValueError("item_chunk_size needs a score function that scores item ranges (item_range=True)")
    budget = _budget(memory, chunk_size)
    shard = _Shard(process_group, num_users, {"topk": topk, "exclude_history": int(exclude_history),
                                              "num_items": -1 if num_items is None else num_items})

    extra = _check_extra(metrics)
    acc = RankAccumulator(ks, extra)
    lists_acc = None  # counts of the items in the top-K lists, made at the first chunk
    need_lists = any(e in LIST_METRICS for e in extra)
    list_k = max(topk, max(acc.ks)) if need_lists else topk
    ranks, lists = [], []
    plan, score_bytes = None, 4
    lo = shard.lo
    while lo < shard.hi:
        if plan is None and (num_items is not None or budget is None):
            plan = plan_chunks(shard.hi - shard.lo, num_items or 2, budget, score_bytes=score_bytes,
                               chunk_size=chunk_size, item_chunk_size=item_chunk_size, item_range=item_range)
        # Without a plan the row width is not known yet: one user's row tells it.
        hi = min(lo + (plan.users if plan is not None else 1), shard.hi)
        rows = torch.arange(lo, hi) if users is None else users[lo:hi]
        ptr = history_indptr[lo:hi + 1]
        start, stop = int(ptr[0]), int(ptr[-1])
        if plan is not None and plan.split_items:
            _check_ids(num_items, target[lo:hi], ptr, history_items[start:stop])
            top, rank = _rank_item_blocks(score_fn, rows, target[lo:hi], ptr - start, history_items[start:stop],
                                          num_items, plan.items, list_k, exclude_history, lo)
        else:
            scores = score_fn(rows, 0, num_items) if item_range else score_fn(rows)
            _check_block(scores, hi - lo, num_items, f"{hi - lo} users")
            if plan is None or scores.element_size() != score_bytes:
                plan = None  # size the next chunks for this row width and dtype
            num_items, score_bytes = scores.shape[1], scores.element_size()
            # Rebase the CSR slice of this chunk so that its row pointer starts at 0.
            dev = scores.device
            top, rank = rank_topk(scores, (ptr - start).to(dev), history_items[start:stop].to(dev),
                                  target[lo:hi].to(dev), list_k, exclude_history, backend=backend)
            del scores  # before the next block is scored: one block alive at a time
        # rank_topk caps its lists at the I - 1 candidate items; the lists here keep
        # list_k columns, padded with 0 (no item) as the op pads short lists.
        top = torch.nn.functional.pad(top, (0, list_k - top.shape[1]))
        rank = rank.cpu()
        acc.add(rank)
        ranks.append(rank)
        if need_lists:
            if lists_acc is None:
                lists_acc = TopKAccumulator(acc.ks, num_items - 1, extra)
            lists_acc.add(top.cpu())
        if topk:
            lists.append(top[:, :topk].cpu())
        del top
        lo = hi
    result = shard.metrics(acc, lists_acc, num_items, extra)
    all_ranks = shard.rows(ranks, torch.zeros(0, dtype=torch.long), gather)
    if topk:
        return result, all_ranks, shard.rows(lists, torch.zeros(0, topk, dtype=torch.long), gather)
    return result, all_ranks


@torch.no_grad()
def evaluate_sampled(
    score_fn: Callable[..., Tensor],
    candidates: Tensor | int,
    ks: Sequence[int] = (5, 10, 20),
    chunk_size: int = 1024,
    backend: str | None = None,
    *,
    process_group=None,
    gather: bool = True,
    metrics: Sequence[str] = (),
) -> tuple[dict[str, float], Tensor]:
    """Sampled-ranking evaluation: each user's target against its stored negatives.

    Args:
        score_fn: the scores of each user's candidates, [hi - lo, 1+N], column 0 the
            target's. Called as ``score_fn(rows, candidates[lo:hi])`` when
            ``candidates`` is a tensor, as ``score_fn(rows)`` when it is a count (the
            function then knows the candidates); ``rows = arange(lo, hi)`` (global).
        candidates: [U, 1+N] int64 item ids (column 0 the target, columns 1..N the
            negatives, drawn outside the user's history, seeded: record the seed in the
            :class:`Protocol`), or the number of users U.
        ks, chunk_size, backend: as in :func:`evaluate_full_ranking` (here the blocks
            are only [chunk_size, 1+N]; None means 1024).
        process_group, gather: sharding over ``torch.distributed``, as in
            :func:`evaluate_full_ranking`.
        metrics: opt-in "Precision", "MAP" (ranks among the candidates); "Coverage"
            and "Gini" describe full-catalogue lists and are refused here.

    Returns:
        ``(metrics, ranks)``, ranks [U] int64 = number of negatives scoring >= the
        target (ties count against the model). Report them with
        ``Protocol(ranking="sampled", num_negatives=N, seed=...)``.
    """
    chunk_size = _check_chunk_size(chunk_size) or 1024
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
    shard = _Shard(process_group, num_users, {"candidate columns": -1 if width is None else width})
    acc = RankAccumulator(ks, extra)
    ranks = []
    for lo in range(shard.lo, shard.hi, chunk_size):
        hi = min(lo + chunk_size, shard.hi)
        rows = torch.arange(lo, hi)
        scores = score_fn(rows) if cand is None else score_fn(rows, cand[lo:hi])
        if scores.dim() != 2 or scores.shape[0] != hi - lo or (width is not None and scores.shape[1] != width):
            raise ValueError(f"score_fn must return [{hi - lo}, {width or '1 + negatives'}] scores, "
                             f"got shape {tuple(scores.shape)}")
        rank = rank_sampled(scores, backend=backend).cpu()
        del scores
        acc.add(rank)
        ranks.append(rank)
    return shard.metrics(acc), shard.rows(ranks, torch.zeros(0, dtype=torch.long), gather)
