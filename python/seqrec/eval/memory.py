"""Memory budget of the full-ranking evaluation: parse it, size it to the machine, and
turn it into block sizes (users per chunk, items per block).

What the budget covers: the score blocks and the ranking's own scratch. It does not
cover the model's encoder activations for a chunk of users, nor the model, the data or
the returned ranks / top-k lists; this is why users per chunk derived from a budget are
capped at :data:`MAX_USERS_PER_CHUNK` (the former fixed default, whose encoder memory
is known to be modest).

Accounting, in bytes, for ``U`` users per chunk and ``C`` items per block of scores of
``s`` bytes each (4 for float32):

* one item block (a whole row per user, ranked by ``rank_topk``):
  ``U * I * s * SCORE_COPIES + threads * I * RANK_SCRATCH_PER_ITEM + I * HISTOGRAM_PER_ITEM``;
* item blocks (two-level top-k, used when even one whole row does not fit):
  ``U * C * (s * SCORE_COPIES + ITEM_BLOCK_EXTRA_PER_SCORE) + I * HISTOGRAM_PER_ITEM``.

``HISTOGRAM_PER_ITEM``: the rank histogram is as long as the largest rank (up to the
catalogue): its int64 counts, and two float64 arrays of its length when the metrics
are computed.

``SCORE_COPIES = 2``: while a score function builds a block it may hold one temporary
of the same size (the models mask the padding column out of place); the evaluator frees
each block before it asks for the next, so two blocks are never alive.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch

__all__ = ["ChunkPlan", "default_eval_memory", "parse_memory", "plan_chunks"]

SCORE_COPIES = 2
# rank_topk's per-thread scratch: an [I] exclusion flag and an [I] (score, id) array.
RANK_SCRATCH_PER_ITEM = 24
# Item-block path: a bool candidate mask, its negation, the block with excluded items
# masked (a copy, for topk) and a bool comparison.
ITEM_BLOCK_EXTRA_PER_SCORE = 7
HISTOGRAM_PER_ITEM = 24
MAX_USERS_PER_CHUNK = 1024
# When rows must be split into item blocks: users per chunk (fewer if the budget is
# tiny) and the narrowest block worth a call of the score function.
ITEM_BLOCK_USERS = 256
MIN_ITEM_BLOCK = 4096
# Share of what the machine offers that the default budget takes.
CPU_FRACTION = 0.25
CUDA_FRACTION = 0.5
FALLBACK_BYTES = 1 << 30

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_MEMORY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: int | float | str, name: str = "memory") -> int:
    """Bytes of a memory size: an int, or a string such as ``"2GiB"``, ``"512MiB"``,
    ``"1.5GB"``, ``"300000000"`` (units B, KB/MB/GB/TB = powers of 1000, KiB/MiB/GiB/TiB =
    powers of 1024, case-insensitive). Raises ValueError naming ``name`` on anything else
    or on a size < 1 byte."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a size in bytes or a string like '2GiB', got {value!r}")
    if isinstance(value, (int, float)):
        size = value
    elif isinstance(value, str):
        match = _MEMORY.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{name} must be a size like '2GiB', '512MiB', '1.5GB' or a number of bytes, "
                             f"got {value!r}")
        size = float(match.group(1)) * _UNITS[unit]
    else:
        raise ValueError(f"{name} must be a size in bytes or a string like '2GiB', got {type(value).__name__}")
    if not size >= 1:  # also refuses NaN
        raise ValueError(f"{name} must be at least 1 byte, got {value!r}")
    return int(size)


def _available_ram() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_eval_memory(device: str | torch.device = "cpu") -> int:
    """The default evaluation budget for scores made on ``device``: ``CPU_FRACTION`` of
    the available RAM (/proc/meminfo MemAvailable; ``FALLBACK_BYTES`` where it cannot be
    read); on CUDA also at most ``CUDA_FRACTION`` of the device's free memory
    (``torch.cuda.mem_get_info``), as blocks made there are often ranked on the host."""
    available = _available_ram()
    budget = FALLBACK_BYTES if available is None else max(1, int(available * CPU_FRACTION))
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():  # pragma: no cover - needs a GPU
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, max(1, int(free * CUDA_FRACTION)))
    return budget


@dataclass(frozen=True)
class ChunkPlan:
    """Block sizes of one evaluation: ``users`` per chunk, ``items`` per block, the
    budget they were derived from (None: sizes given explicitly), and ``split_items``:
    rank item blocks with the two-level top-k (True), or whole rows with one
    ``rank_topk`` call per chunk (False; then ``items`` is the row width)."""

    users: int
    items: int
    budget: int | None
    split_items: bool = False


def plan_chunks(num_users: int, num_items: int, budget: int | None, *, score_bytes: int = 4,
                chunk_size: int | None = None, item_chunk_size: int | None = None,
                item_range: bool = False, threads: int | None = None) -> ChunkPlan:
    """Users per chunk and items per block for ``num_users`` users over ``num_items``
    score columns (the padding column included) under ``budget`` bytes.

    Precedence: an explicit ``chunk_size`` fixes users per chunk and an explicit
    ``item_chunk_size`` fixes items per block; the budget sizes whatever is not given.
    Without a budget (None) the missing sizes are ``MAX_USERS_PER_CHUNK`` users and whole
    rows. With one (see the module docstring for the accounting):

    * whole rows when they fit: users = the rows that fit, at most
      ``MAX_USERS_PER_CHUNK`` (or ``chunk_size``);
    * otherwise item blocks (only when ``item_range``, i.e. the score function can score
      an item range): ``chunk_size`` or ``ITEM_BLOCK_USERS`` users (fewer, without ``chunk_size``,
      when a block of ``min(MIN_ITEM_BLOCK, num_items)`` items would not fit), and as
      many items as then fit.

    When even that is impossible the plan raises ValueError, except that an explicit
    ``chunk_size`` whose rows exceed the budget without ``item_range`` is honoured with
    a warning (the user asked for it).
    """
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    num_users = max(int(num_users), 1)
    if item_chunk_size is not None and not item_range:
        raise ValueError("item_chunk_size needs a score function that scores item ranges (item_range=True)")
    if budget is None:
        users = chunk_size or MAX_USERS_PER_CHUNK
        if item_chunk_size is not None:
            return ChunkPlan(min(chunk_size or ITEM_BLOCK_USERS, num_users), min(item_chunk_size, num_items), None,
                             True)
        return ChunkPlan(min(users, num_users), num_items, None)
    threads = threads or torch.get_num_threads()
    fixed = num_items * HISTOGRAM_PER_ITEM
    if item_chunk_size is None:
        per_row = num_items * score_bytes * SCORE_COPIES
        room = budget - fixed - threads * num_items * RANK_SCRATCH_PER_ITEM
        fit = room // per_row if room > 0 else 0
        if chunk_size is not None and (fit >= chunk_size or not item_range):
            if fit < chunk_size:
                warnings.warn(f"evaluation: {chunk_size} users x {num_items} items of scores need about "
                              f"{chunk_size * per_row + fixed + threads * num_items * RANK_SCRATCH_PER_ITEM} bytes, "
                              f"over the budget of {budget}; the score function cannot score item ranges, "
                              f"so the chunk size is used as given", stacklevel=3)
            return ChunkPlan(min(chunk_size, num_users), num_items, budget)
        if chunk_size is None and fit >= 1:
            return ChunkPlan(min(fit, MAX_USERS_PER_CHUNK, num_users), num_items, budget)
        if not item_range:
            raise ValueError(f"evaluation memory budget of {budget} bytes cannot hold one user's scores over "
                             f"{num_items} items (about {per_row + fixed + threads * num_items * RANK_SCRATCH_PER_ITEM} "
                             f"bytes with the ranking's scratch and rank histogram); raise the budget, or give a "
                             f"score function "
                             f"that scores item ranges (item_range=True) so that items are chunked too")
    per_score = score_bytes * SCORE_COPIES + ITEM_BLOCK_EXTRA_PER_SCORE
    users = min(chunk_size or ITEM_BLOCK_USERS, num_users)
    if item_chunk_size is not None:
        return ChunkPlan(users, min(item_chunk_size, num_items), budget, True)
    room = budget - fixed
    if chunk_size is None:
        users = max(1, min(users, room // (per_score * min(MIN_ITEM_BLOCK, num_items))))
    items = min(room // (users * per_score), num_items)
    if items < 1:
        raise ValueError(f"evaluation memory budget of {budget} bytes cannot hold the rank histogram of "
                         f"{num_items} items ({fixed} bytes) and a block of {users} users x 1 item "
                         f"({users * per_score} bytes); raise the budget")
    return ChunkPlan(users, int(items), budget, True)

