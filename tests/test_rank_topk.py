"""rank_topk / rank_sampled against a NumPy reference written here, the torch reference,
opcheck, fake tensors / compile, bad inputs; and the metric / protocol layer."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

import seqrec  # noqa: F401
from seqrec.eval import (Protocol, RankAccumulator, evaluate_full_ranking, evaluate_sampled,
                         metrics_from_ranks)
from seqrec.ops import rank_sampled, rank_topk

BACKENDS = ["seqrec", "reference"]


# ---------------------------------------------------------------- NumPy reference
def np_rank_topk(scores, indptr, items, target, k, exclude_history=True):
    """Loop-per-user reference: candidates, rank with ties against, lexsorted top-k."""
    scores = np.asarray(scores, dtype=np.float64)  # exact for float16/bfloat16/float32
    num_users, num_items = scores.shape
    k = max(min(k, num_items - 1), 0)  # a list holds at most the I - 1 candidate items
    topk = np.zeros((num_users, k), dtype=np.int64)
    rank = np.zeros(num_users, dtype=np.int64)
    for u in range(num_users):
        s = scores[u]
        cand = np.ones(num_items, dtype=bool)
        cand[0] = False
        if exclude_history:
            cand[items[indptr[u]:indptr[u + 1]]] = False
        cand[target[u]] = True
        c = np.flatnonzero(cand)
        others = c[c != target[u]]
        rank[u] = int(np.sum(s[others] >= s[target[u]]))
        order = c[np.lexsort((c, -s[c]))]  # score descending, then lower id
        n = min(k, order.size)
        topk[u, :n] = order[:n]
    return topk, rank


def np_rank_sampled(scores):
    scores = np.asarray(scores, dtype=np.float64)
    return (scores[:, 1:] >= scores[:, :1]).sum(axis=1)


# ---------------------------------------------------------------- samples
def make_case(rng: np.random.Generator, num_users: int, num_items: int, *, ties: bool, dtype=torch.float32,
              layout: str = "contiguous", target_mode: str = "random"):
    if ties:  # few distinct values: many ties, also with the target
        base = rng.integers(-3, 4, size=(num_users, num_items)).astype(np.float64)
    else:
        base = rng.standard_normal((num_users, num_items))
    lengths = rng.integers(0, min(num_items, 12), size=num_users)
    lengths[rng.random(num_users) < 0.3] = 0  # empty histories
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, num_items, size=int(indptr[-1])).astype(np.int64)  # duplicates and 0 allowed
    target = rng.integers(1, num_items, size=num_users).astype(np.int64)
    for u in range(num_users):
        lo, hi = indptr[u], indptr[u + 1]
        if hi > lo and rng.random() < 0.4:
            items[lo + rng.integers(0, hi - lo)] = target[u]  # target in its own history
    if target_mode == "first":
        base[np.arange(num_users), target] = base.max() + 1.0
    elif target_mode == "last":
        base[np.arange(num_users), target] = base.min() - 1.0
    if layout == "contiguous":
        scores = torch.tensor(base, dtype=dtype)
    elif layout == "transposed":  # item stride != 1
        scores = torch.tensor(base.T.copy(), dtype=dtype).t()
    elif layout == "sliced":  # row stride > items, offset storage
        wide = torch.zeros(num_users, num_items + 5, dtype=dtype)
        wide[:, 2:2 + num_items] = torch.tensor(base, dtype=dtype)
        scores = wide[:, 2:2 + num_items]
    else:
        raise AssertionError(layout)
    return scores, torch.from_numpy(indptr), torch.from_numpy(items), torch.from_numpy(target)


def check_against_numpy(scores, indptr, items, target, k, exclude_history, backend):
    topk, rank = rank_topk(scores, indptr, items, target, k, exclude_history, backend=backend)
    want_topk, want_rank = np_rank_topk(scores.float().numpy() if scores.dtype in (torch.float16, torch.bfloat16)
                                        else scores.numpy(), indptr.numpy(), items.numpy(), target.numpy(), k,
                                        exclude_history)
    assert topk.dtype == torch.int64 and rank.dtype == torch.int64
    assert topk.shape == (scores.shape[0], min(k, scores.shape[1] - 1)) and rank.shape == (scores.shape[0],)
    np.testing.assert_array_equal(rank.numpy(), want_rank)
    np.testing.assert_array_equal(topk.numpy(), want_topk)
    return topk, rank


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("ties", [True, False])
def test_matches_numpy_random(backend, dtype, layout, ties):
    rng = np.random.default_rng(zlib.crc32(repr((backend, str(dtype), layout, ties)).encode()))
    for trial in range(6):
        num_users = int(rng.integers(1, 9))
        num_items = int(rng.integers(2, 40))
        scores, indptr, items, target = make_case(rng, num_users, num_items, ties=ties, dtype=dtype, layout=layout)
        for k in sorted({1, num_items - 1, int(rng.integers(1, num_items + 3)), num_items + 2}):
            for exclude in (True, False):
                check_against_numpy(scores, indptr, items, target, k, exclude, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target_mode", ["first", "last"])
def test_target_at_rank_0_and_beyond_k(backend, target_mode):
    rng = np.random.default_rng(1)
    scores, indptr, items, target = make_case(rng, 7, 30, ties=True, target_mode=target_mode)
    topk, rank = check_against_numpy(scores, indptr, items, target, 5, True, backend)
    if target_mode == "first":
        assert (rank == 0).all() and (topk[:, 0] == target).all()
    else:
        assert (rank >= 5).all() and not (topk == target[:, None]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_larger_rows_blocks_and_excluded_best(backend):
    # Rows of many blocks, so the block-maximum bound prunes most of each row.
    rng = np.random.default_rng(2)
    for ties in (False, True):
        scores, indptr, items, target = make_case(rng, 6, 1500, ties=ties)
        for k in (1, 20, 1499):
            check_against_numpy(scores, indptr, items, target, k, True, backend)
    # Histories made of each user's best-scored items: every top block maximum is
    # excluded, so the list must come from further down.
    scores = torch.tensor(rng.standard_normal((5, 3000)), dtype=torch.float32)
    best = torch.argsort(scores[:, 1:], dim=1, descending=True)[:, :40] + 1
    lengths = torch.tensor([40, 0, 25, 40, 3])
    items = torch.cat([best[u, :n] for u, n in enumerate(lengths.tolist())])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    target = best[:, 10].clone()  # in its own history, among the best: still ranked
    for k in (1, 5, 20, 100):
        topk, rank = check_against_numpy(scores, indptr, items, target, k, True, backend)
    assert rank.tolist()[1] == 10 and rank.tolist()[0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_exact(backend, dtype):
    # Ranking is exact in any dtype: the scores are compared as given (widened exactly).
    rng = np.random.default_rng(3)
    scores, indptr, items, target = make_case(rng, 9, 333, ties=False, dtype=dtype)
    check_against_numpy(scores, indptr, items, target, 10, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_rule_and_padding(backend):
    # Constant scores: every other candidate ties with the target and counts above it;
    # the list is the lowest ids. User 1 has 2 candidates only: the list pads with 0.
    scores = torch.zeros(2, 6)
    indptr = torch.tensor([0, 1, 4])
    items = torch.tensor([2, 1, 2, 5])
    target = torch.tensor([4, 3])
    topk, rank = rank_topk(scores, indptr, items, target, 4, backend=backend)
    assert rank.tolist() == [3, 1]
    assert topk.tolist() == [[1, 3, 4, 5], [3, 4, 0, 0]]
    # Padding column 0 never counts, whatever its score; excluded items never appear.
    scores[:, 0] = 10.0
    scores[0, 2] = 10.0
    topk, rank = rank_topk(scores, indptr, items, target, 4, backend=backend)
    assert rank.tolist() == [3, 1] and (topk != 2).all()
    # Without exclusion the history item 2 is ranked (and beats the target).
    topk, rank = rank_topk(scores, indptr, items, target, 4, exclude_history=False, backend=backend)
    assert rank.tolist() == [4, 4] and topk[0].tolist() == [2, 1, 3, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_zero_and_empty_batch(backend):
    rng = np.random.default_rng(4)
    scores, indptr, items, target = make_case(rng, 5, 20, ties=True)
    topk, rank = rank_topk(scores, indptr, items, target, 0, backend=backend)
    assert topk.shape == (5, 0)
    np.testing.assert_array_equal(rank.numpy(), np_rank_topk(scores.numpy(), indptr.numpy(), items.numpy(),
                                                             target.numpy(), 0)[1])
    topk, rank = rank_topk(torch.zeros(0, 7), torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, dtype=torch.long), 3, backend=backend)
    assert topk.shape == (0, 3) and rank.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_rank_sampled(backend, dtype):
    rng = np.random.default_rng(5)
    base = rng.integers(-2, 3, size=(11, 100)).astype(np.float64)
    scores = torch.tensor(base, dtype=dtype)
    np.testing.assert_array_equal(rank_sampled(scores, backend=backend).numpy(), np_rank_sampled(base))
    noncontig = torch.tensor(base.T.copy(), dtype=dtype).t()
    np.testing.assert_array_equal(rank_sampled(noncontig, backend=backend).numpy(), np_rank_sampled(base))
    assert rank_sampled(scores[:, :1], backend=backend).tolist() == [0] * 11  # no negatives


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_raises(backend):
    rng = np.random.default_rng(6)
    scores, indptr, items, target = make_case(rng, 4, 10, ties=False)
    ok = scores.clone()
    ok[:, 0] = float("nan")  # padding column is never read as a score
    rank_topk(ok, indptr, items, target, 3, backend=backend)
    bad = scores.clone()
    bad[2, 5] = float("nan")
    with pytest.raises(RuntimeError, match=r"rank_topk: argument 'scores' holds NaN in row 2"):
        rank_topk(bad, indptr, items, target, 3, backend=backend)
    bad = scores.clone()
    bad[1, int(target[1])] = float("nan")  # NaN target score
    with pytest.raises(RuntimeError, match=r"NaN in row 1"):
        rank_topk(bad, indptr, items, target, 3, backend=backend)
    sampled = torch.randn(3, 5)
    sampled[1, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"rank_sampled: argument 'scores' holds NaN in row 1"):
        rank_sampled(sampled, backend=backend)


def test_scores_requiring_grad_are_accepted():
    rng = np.random.default_rng(7)
    scores, indptr, items, target = make_case(rng, 4, 10, ties=False)
    scores.requires_grad_(True)
    topk, rank = rank_topk(scores, indptr, items, target, 3)
    assert not topk.requires_grad and not rank.requires_grad
    assert not rank_sampled(scores).requires_grad


def _opcheck_samples():
    rng = np.random.default_rng(8)
    out = []
    for dtype, layout, k in [(torch.float32, "contiguous", 3), (torch.float64, "transposed", 1),
                             (torch.float32, "sliced", 19), (torch.bfloat16, "contiguous", 25)]:
        scores, indptr, items, target = make_case(rng, 5, 20, ties=True, dtype=dtype, layout=layout)
        out.append((scores, indptr, items, target, k, True))
    scores, indptr, items, target = make_case(rng, 3, 9, ties=False)
    out.append((scores.requires_grad_(True), indptr, items, target, 4, False))
    return out


@pytest.mark.parametrize("sample", range(5))
def test_opcheck(sample):
    args = _opcheck_samples()[sample]
    torch.library.opcheck(torch.ops.seqrec.rank_topk.default, args)
    torch.library.opcheck(torch.ops.seqrec.rank_sampled.default, (args[0],))


def test_compile_aot_eager_smoke():
    rng = np.random.default_rng(9)
    scores, indptr, items, target = make_case(rng, 6, 25, ties=True)

    def f(s, p, h, t):
        topk, rank = rank_topk(s, p, h, t, 5)
        return topk, rank, rank_sampled(s[:, :8])

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got, want = compiled(scores, indptr, items, target), f(scores, indptr, items, target)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        s = torch.empty(7, 30)
        topk, rank = torch.ops.seqrec.rank_topk(s, torch.empty(8, dtype=torch.long), torch.empty(11, dtype=torch.long),
                                                torch.empty(7, dtype=torch.long), 4)
        assert topk.shape == (7, 4) and topk.dtype == torch.int64 and rank.shape == (7,)
        assert torch.ops.seqrec.rank_sampled(torch.empty(7, 101)).shape == (7,)


def _valid():
    scores = torch.randn(3, 10)
    return [scores, torch.tensor([0, 2, 2, 4]), torch.tensor([1, 2, 3, 9]), torch.tensor([1, 5, 9]), 3]


@pytest.mark.parametrize("change, match", [
    (lambda a: a.__setitem__(0, a[0].long()), r"rank_topk: argument 'scores' must have dtype float32"),
    (lambda a: a.__setitem__(0, a[0][0]), r"argument 'scores' must be 2-dimensional"),
    (lambda a: a.__setitem__(1, a[1].int()), r"argument 'history_indptr' must have dtype Long"),
    (lambda a: a.__setitem__(2, a[2].float()), r"argument 'history_items' must have dtype Long"),
    (lambda a: a.__setitem__(3, a[3].int()), r"argument 'target' must have dtype Long"),
    (lambda a: a.__setitem__(3, a[3][:2]), r"argument 'target' must have shape \[3\]"),
    (lambda a: a.__setitem__(1, a[1][:3]), r"argument 'history_indptr' must have shape \[4\]"),
    (lambda a: a.__setitem__(3, torch.tensor([1, 0, 9])), r"argument 'target' must hold item ids in \[1, 10\).*target\[1\] = 0"),
    (lambda a: a.__setitem__(3, torch.tensor([1, 10, 9])), r"argument 'target' .*target\[1\] = 10"),
    (lambda a: a.__setitem__(1, torch.tensor([0, 3, 2, 4])), r"argument 'history_indptr' must be non-decreasing"),
    (lambda a: a.__setitem__(1, torch.tensor([1, 2, 2, 4])), r"argument 'history_indptr' must start at 0"),
    (lambda a: a.__setitem__(1, torch.tensor([0, 2, 2, 3])), r"argument 'history_indptr' must end at len\(history_items\)"),
    (lambda a: a.__setitem__(2, torch.tensor([1, 2, 10, 9])), r"argument 'history_items' must hold item ids in \[0, 10\).*history_items\[2\] = 10"),
    (lambda a: a.__setitem__(2, torch.tensor([1, -1, 3, 9])), r"argument 'history_items' .*history_items\[1\] = -1"),
    (lambda a: a.__setitem__(4, -1), r"argument 'k' must be >= 0"),
])
def test_bad_inputs_raise(change, match):
    args = _valid()
    rank_topk(*args)  # the unchanged arguments are fine
    change(args)
    with pytest.raises(RuntimeError, match=match):
        rank_topk(*args)


def test_bad_inputs_rank_sampled():
    with pytest.raises(RuntimeError, match=r"rank_sampled: argument 'scores' must have dtype"):
        rank_sampled(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"rank_sampled: argument 'scores' must be 2-dimensional"):
        rank_sampled(torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"rank_sampled: argument 'scores' must have at least 1 column"):
        rank_sampled(torch.zeros(3, 0))


# ---------------------------------------------------------------- metrics and protocols
def test_metrics_from_ranks_values():
    ranks = np.array([0, 1, 4, 5, 9, 10, 30])
    m = metrics_from_ranks(torch.from_numpy(ranks), ks=(1, 5, 10))
    assert list(m) == ["HR@1", "NDCG@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR"]
    assert m["HR@1"] == pytest.approx(1 / 7) and m["NDCG@1"] == pytest.approx(1 / 7)
    assert m["HR@5"] == pytest.approx(3 / 7)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 7)
    assert m["HR@10"] == pytest.approx(5 / 7)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(7)
                                          + 1 / math.log2(11)) / 7)
    assert m["MRR"] == pytest.approx(sum(1 / (r + 1) for r in ranks) / 7)
    assert metrics_from_ranks(ranks, ks=(1, 5, 10)) == m  # ndarray in, same result
    with pytest.raises(ValueError, match="integers"):
        metrics_from_ranks(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        metrics_from_ranks(np.array([0, -1]))
    with pytest.raises(ValueError, match="no ranks"):
        metrics_from_ranks(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="ks must be"):
        metrics_from_ranks(ranks, ks=(0, 5))


def test_rank_accumulator_independent_of_chunking():
    rng = np.random.default_rng(10)
    ranks = rng.geometric(0.01, size=5000) - 1
    want = metrics_from_ranks(ranks)
    for size in (1, 7, 333, 5000):
        acc = RankAccumulator()
        for lo in range(0, ranks.size, size):
            acc.add(torch.from_numpy(ranks[lo:lo + size]))
        assert acc.count == ranks.size
        assert acc.compute() == want  # exactly


def _full_ranking_setup(seed=11, num_users=40, num_items=300):
    rng = np.random.default_rng(seed)
    user_emb = torch.tensor(rng.standard_normal((num_users, 8)), dtype=torch.float32)
    item_emb = torch.tensor(rng.standard_normal((num_items, 8)), dtype=torch.float32)
    lengths = rng.integers(0, 15, size=num_users)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    items = torch.from_numpy(rng.integers(1, num_items, size=int(indptr[-1])).astype(np.int64))
    target = torch.from_numpy(rng.integers(1, num_items, size=num_users).astype(np.int64))

    def score_fn(users):
        return (user_emb[users] @ item_emb.T).round(decimals=1)  # rounding makes ties

    return score_fn, torch.arange(num_users), target, indptr, items


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_full_ranking_chunking(backend):
    score_fn, users, target, indptr, items = _full_ranking_setup()
    all_scores = score_fn(users)
    _, want_rank = np_rank_topk(all_scores.numpy(), indptr.numpy(), items.numpy(), target.numpy(), 0)
    results = [evaluate_full_ranking(score_fn, target, indptr, items, chunk_size=c, backend=backend, topk=10)
               for c in (1, 7, len(users))]
    for metrics, ranks, lists in results:
        np.testing.assert_array_equal(ranks.numpy(), want_rank)
        assert metrics == results[0][0]  # exactly, whatever the chunk size
        assert torch.equal(lists, results[0][2]) and lists.shape == (len(users), 10)
    assert results[0][0] == metrics_from_ranks(want_rank)
    metrics, ranks = evaluate_full_ranking(score_fn, target, indptr, items, ks=(1, 50), chunk_size=16,
                                           exclude_history=False, backend=backend)
    _, want_noex = np_rank_topk(all_scores.numpy(), indptr.numpy(), items.numpy(), target.numpy(), 0, False)
    np.testing.assert_array_equal(ranks.numpy(), want_noex)
    assert list(metrics) == ["HR@1", "NDCG@1", "HR@50", "NDCG@50", "MRR"]


def test_evaluate_full_ranking_sub_slice_users_and_errors():
    score_fn, users, target, indptr, items = _full_ranking_setup()
    _, full_ranks = evaluate_full_ranking(score_fn, target, indptr, items, chunk_size=9)
    # A slice of a bigger CSR (indptr does not start at 0); score_fn gets users[lo:hi].
    _, part = evaluate_full_ranking(score_fn, target[10:30], indptr[10:31], items, chunk_size=4,
                                    users=users[10:30])
    assert torch.equal(part, full_ranks[10:30])
    with pytest.raises(ValueError, match="argument 'users' must have 40 entries"):
        evaluate_full_ranking(score_fn, target, indptr, items, users=users[:-1])
    with pytest.raises(ValueError, match="argument 'history_indptr' must have shape"):
        evaluate_full_ranking(score_fn, target, indptr[:-1], items)
    with pytest.raises(ValueError, match="score_fn must return"):
        evaluate_full_ranking(lambda u: score_fn(u)[:1], target, indptr, items)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_full_ranking(score_fn, target, indptr, items, chunk_size=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_scores_stride_zero(backend):
    # One score vector for every user (a popularity baseline): rows with stride 0.
    rng = np.random.default_rng(13)
    popularity = torch.tensor(rng.integers(0, 6, size=50), dtype=torch.float32)
    _, _, indptr, items = _full_ranking_setup(num_users=12, num_items=50)[1:]
    target = torch.from_numpy(rng.integers(1, 50, size=12).astype(np.int64))
    scores = popularity.expand(12, -1)
    topk, rank = check_against_numpy(scores, indptr, items, target, 7, True, backend)
    metrics, ranks = evaluate_full_ranking(lambda rows: popularity.expand(len(rows), -1), target, indptr, items,
                                           chunk_size=5, backend=backend)
    assert torch.equal(ranks, rank)


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_sampled(backend):
    rng = np.random.default_rng(12)
    num_users, num_items, n = 30, 200, 99
    item_emb = torch.tensor(rng.integers(-2, 3, size=(num_items, 4)), dtype=torch.float32)
    user_emb = torch.tensor(rng.integers(-2, 3, size=(num_users, 4)), dtype=torch.float32)
    candidates = torch.from_numpy(rng.integers(1, num_items, size=(num_users, 1 + n)).astype(np.int64))

    def score_fn(users, cands):
        return (user_emb[users][:, None, :] * item_emb[cands]).sum(-1)

    want = np_rank_sampled(score_fn(torch.arange(num_users), candidates).numpy())
    results = [evaluate_sampled(score_fn, candidates, ks=(1, 5, 10), chunk_size=c, backend=backend) for c in (1, 7, 30)]
    # The other form: a user count, and a score_fn that knows the candidates.
    results.append(evaluate_sampled(lambda rows: score_fn(rows, candidates[rows]), num_users, ks=(1, 5, 10),
                                    chunk_size=8, backend=backend))
    for metrics, ranks in results:
        np.testing.assert_array_equal(ranks.numpy(), want)
        assert metrics == results[0][0] == metrics_from_ranks(want, ks=(1, 5, 10))
    with pytest.raises(ValueError, match=r"score_fn must return \[7, 100\]"):
        evaluate_sampled(lambda rows, c: score_fn(rows, c)[:, :50], candidates, chunk_size=7)


def test_protocol_describe():
    full = Protocol()
    assert full.describe() == ("split=leave-one-out; ranking=full (target vs all items); history items excluded "
                               "(target kept); tie rule: ties count against the model")
    sampled = Protocol(ranking="sampled", num_negatives=99, seed=42)
    assert "target vs 99 negatives, seed 42" in sampled.describe()
    assert Protocol(exclude_history=False).describe().count("NOT excluded") == 1
    assert "leave-one-out (inputs: last 50 items)" in Protocol(num_negatives=0, max_len=50).describe()
    line = full.report({"HR@10": 0.0605, "MRR": 0.02})
    assert line.startswith("HR@10 0.0605 MRR 0.0200 | split=leave-one-out")
    with pytest.raises(ValueError, match="num_negatives"):
        Protocol(ranking="sampled")
    with pytest.raises(ValueError, match="ranking"):
        Protocol(ranking="topk")
    with pytest.raises(ValueError, match="tie_rule"):
        Protocol(tie_rule="random")


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluator_lists_keep_their_width_when_k_exceeds_the_catalogue(backend):
    # rank_topk caps k at the I - 1 candidates; the evaluator's lists (and the Coverage /
    # Gini counts over the top-max(ks) lists) keep their documented width, 0-padded.
    from seqrec.eval.ranking import evaluate_full_ranking

    scores = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))  # items 1..5
    indptr, items, target = torch.tensor([0, 1, 1, 2, 2]), torch.tensor([2, 4]), torch.tensor([1, 3, 5, 2])
    metrics, ranks, lists = evaluate_full_ranking(lambda u: scores[u], target, indptr, items, ks=(2, 10),
                                                  backend=backend, topk=8, metrics=("Coverage",))
    assert lists.shape == (4, 8) and (lists[:, 5:] == 0).all()
    capped, _ = rank_topk(scores, indptr, items, target, 8, backend=backend)
    assert torch.equal(lists[:, :5], capped)
    assert metrics["Coverage@10"] == 1.0
