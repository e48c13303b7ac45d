"""Evaluation under a memory budget: budget parsing and sizing, item-block (two-level
top-k) ranking against the whole-row rank_topk, one score block alive at a time."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from seqrec.eval import evaluate_full_ranking, evaluate_sampled
from seqrec.eval import memory as evmem
from seqrec.eval.memory import ChunkPlan, default_eval_memory, parse_memory, plan_chunks
from seqrec.ops import rank_topk


# ---------------------------------------------------------------- budget
def test_parse_memory():
    assert parse_memory("2GiB") == 2 * 2**30
    assert parse_memory("512mib") == 512 * 2**20
    assert parse_memory("1.5GB") == 1_500_000_000
    assert parse_memory(" 300000 ") == 300000
    assert parse_memory("64 KiB") == 65536
    assert parse_memory(1024) == 1024
    for bad in ("", "2 GiBs", "-1GiB", "GiB", "0", 0, 0.5, True, [1], "nan"):
        with pytest.raises(ValueError, match="eval_memory"):
            parse_memory(bad, "eval_memory")


def test_default_eval_memory(monkeypatch):
    monkeypatch.setattr(evmem, "_available_ram", lambda: 8 * 2**30)
    assert default_eval_memory() == int(8 * 2**30 * evmem.CPU_FRACTION)
    monkeypatch.setattr(evmem, "_available_ram", lambda: None)
    assert default_eval_memory("cpu") == evmem.FALLBACK_BYTES
    monkeypatch.undo()
    assert default_eval_memory() >= 1  # this machine's /proc/meminfo


def test_plan_chunks_from_budget():
    items, s, copies, scratch = 10_000, 4, evmem.SCORE_COPIES, evmem.RANK_SCRATCH_PER_ITEM
    row, hist = items * s * copies, evmem.HISTOGRAM_PER_ITEM
    # Whole rows: as many as fit after the rank histogram and rank_topk's per-thread
    # scratch, capped.
    budget = hist * items + 2 * items * scratch + 37 * row + row // 2
    assert plan_chunks(5000, items, budget, threads=2) == ChunkPlan(37, items, budget)
    assert plan_chunks(20, items, budget, threads=2) == ChunkPlan(20, items, budget)
    assert plan_chunks(10**6, items, 10**12, threads=2).users == evmem.MAX_USERS_PER_CHUNK
    assert plan_chunks(5000, items, budget, threads=2, score_bytes=8).users == 18
    # No budget: the old fixed default, whole rows.
    assert plan_chunks(5000, items, None) == ChunkPlan(evmem.MAX_USERS_PER_CHUNK, items, None)
    # An explicit chunk size wins over the budget for users ...
    assert plan_chunks(5000, items, budget, chunk_size=10, threads=2) == ChunkPlan(10, items, budget)
    # ... and is honoured with a warning when its rows exceed the budget and items cannot be split,
    with pytest.warns(UserWarning, match="over the budget"):
        assert plan_chunks(5000, items, budget, chunk_size=100, threads=2) == ChunkPlan(100, items, budget)
    # ... or items are split to keep the budget.
    per_score = s * copies + evmem.ITEM_BLOCK_EXTRA_PER_SCORE
    assert plan_chunks(5000, items, budget, chunk_size=100, threads=2, item_range=True) == \
        ChunkPlan(100, (budget - hist * items) // (100 * per_score), budget, True)
    # A row that does not fit: item blocks of ITEM_BLOCK_USERS users when they can be
    # MIN_ITEM_BLOCK wide, fewer users otherwise.
    big = 100_000
    small = hist * big + 10 * per_score * evmem.MIN_ITEM_BLOCK + 5
    assert small < big * (s * copies + hist + 2 * scratch)  # one row, the histogram, the scratch of 2 threads
    plan = plan_chunks(5000, big, small, threads=2, item_range=True)
    assert plan == ChunkPlan(10, evmem.MIN_ITEM_BLOCK, small, True)
    assert plan.users * plan.items * per_score + hist * big <= small
    tiny = hist * items + 3 * per_score
    assert plan_chunks(5000, items, tiny, item_range=True, threads=1) == ChunkPlan(1, 3, tiny, True)
    # The whole row in one item block still ranks by item blocks (no rank_topk scratch).
    assert plan_chunks(5000, 100, 100 * hist + 50 * 100 * per_score, item_range=True, threads=1000) == \
        ChunkPlan(50, 100, 100 * hist + 50 * 100 * per_score, True)
    with pytest.raises(ValueError, match="cannot hold one user's scores over 100000 items"):
        plan_chunks(5000, big, small, threads=2)
    with pytest.raises(ValueError, match="cannot hold the rank histogram of 10000 items"):
        plan_chunks(5000, items, hist * items + per_score - 1, item_range=True)
    assert plan_chunks(5000, items, small, item_chunk_size=500, item_range=True) == ChunkPlan(
        evmem.ITEM_BLOCK_USERS, 500, small, True)
    assert plan_chunks(5000, items, None, chunk_size=7, item_chunk_size=500, item_range=True) == ChunkPlan(
        7, 500, None, True)


# ---------------------------------------------------------------- item blocks = whole rows
def _tied_setup(seed, num_users=23, num_items=61, dtype=torch.float32):
    """A score table with many ties: small integers, +-0.0, -inf and a constant row."""
    rng = np.random.default_rng(seed)
    table = torch.tensor(rng.integers(-3, 4, size=(num_users, num_items)), dtype=torch.float32)
    table[table == 0] = torch.where(torch.rand(int((table == 0).sum()), generator=torch.Generator().manual_seed(seed))
                                    < 0.5, -0.0, 0.0)
    table[rng.random((num_users, num_items)) < 0.05] = float("-inf")
    table[3] = 1.0  # a constant row: the worst rank, lists by item id
    table[:, 0] = float("-inf")
    table = table.to(dtype)
    lengths = rng.integers(0, 25, size=num_users)
    lengths[5] = num_items  # a user whose history covers everything: fewer candidates than k
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    items = torch.from_numpy(rng.integers(0, num_items, size=int(indptr[-1])).astype(np.int64))
    items[indptr[5]:indptr[6]] = torch.arange(num_items)
    target = torch.from_numpy(rng.integers(1, num_items, size=num_users).astype(np.int64))
    target[7] = num_items - 1
    target[8] = 1
    return table, target, indptr, items


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("exclude", [True, False])
def test_item_blocks_equal_whole_rows(dtype, exclude):
    table, target, indptr, items = _tied_setup(3, dtype=dtype)
    num_users, num_items = table.shape
    calls = []

    def ranged(rows, lo, hi):
        calls.append((len(rows), hi - lo))
        return table[rows, lo:hi].clone()

    full = dtype == torch.float32  # the other dtypes go through the same keys after .float()
    for k in (0, 1, 10, num_items + 4) if full else (10,):
        want_top, want_rank = rank_topk(table, indptr, items, target, k, exclude)
        # rank_topk caps k at the I - 1 candidates; the evaluator's lists stay k wide, 0-padded.
        want_top = torch.nn.functional.pad(want_top, (0, k - want_top.shape[1]))
        want_metrics, whole_rank, *whole_top = evaluate_full_ranking(
            lambda rows: table[rows].clone(), target, indptr, items, chunk_size=num_users, exclude_history=exclude,
            topk=k)
        assert torch.equal(whole_rank, want_rank)
        blocks = ((1, 7), (4, 3), (7, 16), (num_users, num_items - 1), (5, num_items)) if full else ((4, 3), (5, 60))
        for chunk, block in blocks:
            calls.clear()
            metrics, rank, *top = evaluate_full_ranking(ranged, target, indptr, items, chunk_size=chunk,
                                                        exclude_history=exclude, topk=k, num_items=num_items,
                                                        item_range=True, item_chunk_size=block)
            assert torch.equal(rank, want_rank), (k, chunk, block)
            assert metrics == want_metrics  # exactly
            if k:
                assert torch.equal(top[0], want_top), (k, chunk, block)
            assert max(c[0] for c in calls) <= chunk and max(c[1] for c in calls) <= block


def test_item_blocks_equal_whole_rows_continuous_scores():
    # Few ties: the blocks' lists come from topk on the scores (no exact keys needed),
    # except where a tie was planted at the boundary of a row's top 5.
    table, target, indptr, items = _tied_setup(8, num_users=30, num_items=200)
    table = torch.randn(table.shape, generator=torch.Generator().manual_seed(8))
    table[:, 0] = float("-inf")
    table[2, 10:20] = table[2].max()  # ten equal best items: ids decide
    table[4, 100:110] = table[4, 1:].sort(descending=True).values[3]  # ties at the 4th place
    for exclude in (True, False):
        want_top, want_rank = rank_topk(table, indptr, items, target, 5, exclude)
        for chunk, block in ((4, 13), (30, 64), (7, 199)):
            _, rank, top = evaluate_full_ranking(lambda r, lo, hi: table[r, lo:hi], target, indptr, items,
                                                 chunk_size=chunk, exclude_history=exclude, topk=5,
                                                 num_items=200, item_range=True, item_chunk_size=block)
            assert torch.equal(rank, want_rank) and torch.equal(top, want_top), (exclude, chunk, block)


def test_item_blocks_from_the_budget():
    # A budget too small for one whole row: the evaluation splits items, and the blocks
    # it asks for are those of plan_chunks.
    table, target, indptr, items = _tied_setup(4, num_users=40, num_items=5000)
    num_users, num_items = table.shape
    budget = 3 * evmem.MIN_ITEM_BLOCK * (4 * evmem.SCORE_COPIES + evmem.ITEM_BLOCK_EXTRA_PER_SCORE) \
        + num_items * evmem.HISTOGRAM_PER_ITEM
    plan = plan_chunks(num_users, num_items, budget, item_range=True)
    assert plan == ChunkPlan(3, evmem.MIN_ITEM_BLOCK, budget, True)
    calls = []

    def ranged(rows, lo, hi):
        calls.append((len(rows), lo, hi))
        return table[rows, lo:hi].clone()

    metrics, rank, top = evaluate_full_ranking(ranged, target, indptr, items, topk=10, num_items=num_items,
                                               item_range=True, memory=budget)
    want_top, want_rank = rank_topk(table, indptr, items, target, 10)
    assert torch.equal(rank, want_rank) and torch.equal(top, want_top)
    widths = {hi - lo for _, lo, hi in calls}
    assert max(widths) == plan.items and max(n for n, _, _ in calls) == plan.users
    # With room for whole rows, one call per chunk over the whole catalogue.
    calls.clear()
    assert evaluate_full_ranking(ranged, target, indptr, items, topk=10, num_items=num_items, item_range=True,
                                 memory="1GiB")[0] == metrics
    assert all((lo, hi) == (0, num_items) for _, lo, hi in calls)


def test_item_blocks_errors():
    table, target, indptr, items = _tied_setup(5)
    num_items = table.shape[1]

    def ranged(rows, lo, hi):
        return table[rows, lo:hi].clone()

    kw = dict(num_items=num_items, item_range=True, item_chunk_size=8)
    bad = table.clone()
    bad[6, 20] = float("nan")
    with pytest.raises(RuntimeError, match="NaN in row 6"):
        evaluate_full_ranking(lambda r, lo, hi: bad[r, lo:hi].clone(), target, indptr, items, chunk_size=4, **kw)
    with pytest.raises(ValueError, match=r"score_fn must return \[\d+, 8\] scores for items \[\d+, \d+\), got \(\d+, 9\)"):
        evaluate_full_ranking(lambda r, lo, hi: table[r, lo:hi + 1], target, indptr, items, chunk_size=4, **kw)
    with pytest.raises(ValueError, match="'target' must hold item ids in 1..60"):
        evaluate_full_ranking(ranged, target * 0, indptr, items, **kw)
    with pytest.raises(ValueError, match="'history_items' must hold item ids in 0..60"):
        evaluate_full_ranking(ranged, target, indptr, items + 100, **kw)
    with pytest.raises(ValueError, match="float64"):
        evaluate_full_ranking(lambda r, lo, hi: table.double()[r, lo:hi], target, indptr, items, topk=3, **kw)
    # float64 ranks need no order keys.
    assert torch.equal(
        evaluate_full_ranking(lambda r, lo, hi: table.double()[r, lo:hi], target, indptr, items, **kw)[1],
        rank_topk(table, indptr, items, target, 0)[1])
    with pytest.raises(ValueError, match="item_range=True needs num_items"):
        evaluate_full_ranking(ranged, target, indptr, items, item_range=True)
    with pytest.raises(ValueError, match="item_chunk_size needs"):
        evaluate_full_ranking(lambda r: table[r], target, indptr, items, item_chunk_size=4)
    with pytest.raises(ValueError, match="memory must be"):
        evaluate_full_ranking(lambda r: table[r], target, indptr, items, memory="lots")
    with pytest.raises(ValueError, match="cannot hold one user's scores"):
        evaluate_full_ranking(lambda r: table[r], target, indptr, items, memory=100, num_items=num_items)


# ---------------------------------------------------------------- one block alive
@pytest.mark.parametrize("ranged", [False, True])
def test_one_score_block_alive(ranged):
    table, target, indptr, items = _tied_setup(6, num_users=30)
    num_items = table.shape[1]
    alive = []

    def score_fn(rows, lo=0, hi=num_items):
        assert all(ref() is None for ref in alive), "the previous score block is still alive"
        scores = table[rows, lo:hi].clone()
        alive.append(weakref.ref(scores))
        return scores

    kw = dict(num_items=num_items, item_range=True, item_chunk_size=9) if ranged else {}
    metrics, rank, top = evaluate_full_ranking(score_fn, target, indptr, items, chunk_size=4, topk=5, **kw)
    assert len(alive) >= 8
    assert torch.equal(rank, rank_topk(table, indptr, items, target, 0)[1])

    cand = torch.randint(1, num_items, (30, 11), generator=torch.Generator().manual_seed(0))
    alive.clear()

    def cand_fn(rows, c):
        assert all(ref() is None for ref in alive), "the previous score block is still alive"
        scores = table[rows[:, None], c].clone()
        alive.append(weakref.ref(scores))
        return scores

    evaluate_sampled(cand_fn, cand, chunk_size=4)
    assert len(alive) == 8


def test_budget_without_num_items_learns_the_width():
    # Whole-row score functions need no num_items: the first chunk (one user) gives it.
    table, target, indptr, items = _tied_setup(7, num_users=50)
    sizes = []

    def score_fn(rows):
        sizes.append(len(rows))
        return table[rows].clone()

    per_row = table.shape[1] * 4 * evmem.SCORE_COPIES
    budget = table.shape[1] * (torch.get_num_threads() * evmem.RANK_SCRATCH_PER_ITEM + evmem.HISTOGRAM_PER_ITEM) \
        + 12 * per_row
    _, rank = evaluate_full_ranking(score_fn, target, indptr, items, memory=budget)
    assert sizes[0] == 1 and max(sizes) == 12 and sum(sizes) == 50
    assert torch.equal(rank, rank_topk(table, indptr, items, target, 0)[1])


# ---------------------------------------------------------------- trainer and CLI
TINY = ["--data", "synthetic", "--synthetic-users", "120", "--synthetic-items", "150", "--hidden-size", "16",
        "--num-layers", "1", "--max-len", "20", "--batch-size", "64", "--patience", "0", "--sampled-negatives", "20",
        "--epochs", "1", "--no-progress"]


def test_cli_eval_chunk_size_and_memory(tmp_path, capsys, monkeypatch):
    from seqrec.cli import main
    from seqrec.train import trainer as trainer_module

    seen = []
    original = trainer_module.evaluate_full_ranking

    def spy(*args, **kwargs):
        seen.append((kwargs["chunk_size"], kwargs["memory"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_full_ranking", spy)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--eval-chunk-size", "7", "--out", str(run)]) == 0
    assert set(seen) == {(7, None)}  # an explicit chunk size alone: whole rows of 7 users
    tables = capsys.readouterr().out.split("\n", 1)[1]
    assert main(["train", *TINY, "--eval-memory", "3MiB"]) == 0
    assert seen[-1] == (None, "3MiB")
    assert capsys.readouterr().out.split("\n", 1)[1] == tables  # blocks never change the metrics
    assert main(["train", *TINY]) == 0
    assert seen[-1][0] is None and seen[-1][1] >= 1  # the machine's budget
    capsys.readouterr()
    # The budget reaches the evaluation (this one cannot hold a row of 151 scores) ...
    assert main(["train", *TINY, "--eval-memory", "1KiB"]) == 2
    assert "cannot hold one user's scores over 151 items" in capsys.readouterr().err
    # malformed values are refused while parsing, naming the option
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, "--eval-memory", "lots"])
    assert exit_info.value.code == 2
    assert "argument --eval-memory: the size must be a size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, "--eval-chunk-size", "0"])
    assert exit_info.value.code == 2
    assert "argument --eval-chunk-size: must be >= 1" in capsys.readouterr().err
    # ... and `evaluate` takes the run's settings unless told otherwise.
    seen.clear()
    assert main(["evaluate", "--checkpoint", str(run)]) == 0
    assert seen == [(7, None)] and capsys.readouterr().out.split("\n", 1)[1].strip() == tables.strip()
    assert main(["evaluate", "--checkpoint", str(run), "--eval-memory", "2MiB"]) == 0
    assert seen[-1] == (None, "2MiB")
    assert main(["evaluate", "--checkpoint", str(run), "--eval-memory", "1KiB"]) == 2
