"""Sharded evaluation over ``torch.distributed``: which users a rank evaluates, and the
exact merge of the ranks' results.

The users are split into contiguous shards by rank (:func:`shard_range`); each rank
ranks its shard chunk by chunk and keeps an integer histogram of the ranks. The
histograms are summed across ranks with ``all_reduce`` on int64 (exact), so the
metrics, computed from the summed histogram, are bit for bit those of one process,
whatever the world size and the chunk sizes. Per-user ranks and top-k lists, when
gathered, come back in the users' order (shard of rank 0 first).

Every rank of the group must call the evaluation with the same users (the sizes are
checked collectively, so a mismatch raises the same error on every rank instead of
hanging). A rank that fails inside its own score function leaves the others waiting in
the next collective until the process group's timeout.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .metrics import RankAccumulator, TopKAccumulator

__all__ = ["LOCAL", "resolve_group", "shard_range", "check_same", "all_reduce_ranks", "all_reduce_lists",
           "gather_rows"]

# process_group=LOCAL: evaluate every user in this process even when torch.distributed
# is initialised (e.g. rank 0 alone evaluating a model).
LOCAL = "local"


def resolve_group(process_group) -> object | None:
    """The group to shard over, or None for a one-process evaluation.

    ``None`` (the default): the default group when ``torch.distributed`` is initialised
    with a world size > 1, else one process. ``LOCAL`` (``"local"``): one process. A
    ``ProcessGroup``: that group (world size 1 included).
    """
    if isinstance(process_group, str):
        if process_group != LOCAL:
            raise ValueError(f"process_group must be None, {LOCAL!r} or a torch.distributed ProcessGroup, "
                             f"got {process_group!r}")
        return None
    if process_group is None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group was given but torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first)")
    return process_group


def shard_range(num_users: int, rank: int, world_size: int) -> tuple[int, int]:
    """Users ``[lo, hi)`` of ``rank``: contiguous shards whose sizes differ by at most one
    (``lo = num_users * rank // world_size``); a rank gets none when there are more
    ranks than users."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return num_users * rank // world_size, num_users * (rank + 1) // world_size


def _device(group) -> torch.device:
    # NCCL moves only CUDA tensors; gloo (and the others) take CPU tensors.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_same(values: Sequence[int], names: Sequence[str], group) -> None:
    """Raise ValueError on every rank when ranks disagree on any of ``values``."""
    dev = _device(group)
    mine = torch.tensor([int(v) for v in values], dtype=torch.int64, device=dev)
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    differ = [f"{n} ({int(a)} to {int(b)})" for n, a, b in zip(names, lo.tolist(), hi.tolist()) if a != b]
    if differ:
        raise ValueError("sharded evaluation: the ranks of the process group were called with different "
                         + ", ".join(differ) + "; every rank must pass the same users")


def all_reduce_ranks(acc: RankAccumulator, group) -> RankAccumulator:
    """A new accumulator holding the sum of every rank's ``acc`` histogram (int64 sums:
    exact)."""
    dev = _device(group)
    hist = acc.histogram()
    length = torch.tensor([hist.shape[0]], dtype=torch.int64, device=dev)
    dist.all_reduce(length, op=dist.ReduceOp.MAX, group=group)
    padded = torch.zeros(int(length), dtype=torch.int64, device=dev)
    padded[: hist.shape[0]] = torch.from_numpy(hist).to(dev)
    dist.all_reduce(padded, op=dist.ReduceOp.SUM, group=group)
    total = RankAccumulator(acc.ks, acc.extra)
    total.add_histogram(padded.cpu().numpy())
    return total


def all_reduce_lists(lists: TopKAccumulator | None, ks: Sequence[int], num_items: int | None, extra,
                     group) -> TopKAccumulator | None:
    """A new accumulator holding the sum of every rank's top-K list counts (int64:
    exact). ``lists`` is None on a rank that ranked nobody (``num_items``, the score
    width with padding, may then be unknown); None comes back when no rank ranked."""
    dev = _device(group)
    width = torch.tensor([num_items if lists is not None else -1], dtype=torch.int64, device=dev)
    dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group)
    width = int(width)
    if width < 0:
        return None
    total = TopKAccumulator(ks, width - 1, extra)
    counts = torch.from_numpy(lists.all_counts() if lists is not None else total.all_counts()).to(dev)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    total.add_counts(counts.cpu().numpy())
    return total


def gather_rows(rows: Tensor, group) -> Tensor:
    """Concatenate every rank's ``rows`` ([n_r, ...], n_r may differ and be 0) in rank
    order, on every rank: sizes are exchanged first, then the rows padded to the
    largest size are all-gathered and trimmed."""
    dev = _device(group)
    world = dist.get_world_size(group)
    size = torch.tensor([rows.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = rows.new_zeros((longest,) + tuple(rows.shape[1:]), device=dev)
    padded[: rows.shape[0]] = rows.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n].cpu() for part, n in zip(parts, sizes)])
