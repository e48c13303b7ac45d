"""Precision@K, MAP@K, Coverage@K and Gini@K: from the one ranking pass, independent of
the chunk size, against plain-NumPy computations written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.eval import TopKAccumulator, evaluate_full_ranking, evaluate_sampled, metric_names, metrics_from_ranks

KS = (1, 3, 10)


def problem(seed=0, users=37, items=25):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(users, items + 1)).astype(np.float32)  # many ties
    target = rng.integers(1, items + 1, size=users)
    lengths = rng.integers(0, 6, size=users)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    hist = rng.integers(1, items + 1, size=indptr[-1])
    hist[indptr[:-1][lengths > 0]] = target[lengths > 0]  # the target in its own history: still ranked
    return scores, target, indptr, hist


def numpy_lists(scores, target, indptr, hist, k):
    """Ranks and top-k lists under seqrec's rules, one user at a time."""
    ranks, lists = [], []
    for u in range(len(target)):
        allowed = np.ones(scores.shape[1], bool)
        allowed[0] = False
        h = hist[indptr[u]:indptr[u + 1]]
        allowed[h[h != target[u]]] = False
        cand = np.flatnonzero(allowed)
        s = scores[u, cand].astype(np.float64)
        ranks.append(int(np.sum((s >= scores[u, target[u]]) & (cand != target[u]))))
        best = cand[np.lexsort((cand, -s))][:k]  # score descending, lower id first
        lists.append(np.pad(best, (0, k - len(best))))
    return np.array(ranks), np.array(lists)


def numpy_metrics(ranks, lists, num_items):
    out = {}
    for k in KS:
        hit = ranks < k
        out[f"Precision@{k}"] = hit.sum() / k / len(ranks)
        out[f"MAP@{k}"] = np.where(hit, 1.0 / (ranks + 1), 0.0).mean()
        top = lists[:, :k].ravel()
        top = top[top != 0]
        counts = np.bincount(top, minlength=num_items + 1)[1:].astype(np.float64)
        out[f"Coverage@{k}"] = np.count_nonzero(counts) / num_items
        # Gini as the mean absolute difference over twice the mean (a different formula)
        out[f"Gini@{k}"] = np.abs(counts[:, None] - counts[None, :]).sum() / (2 * num_items ** 2 * counts.mean())
    return out


def run(scores, target, indptr, hist, chunk, extra=("Precision", "MAP", "Coverage", "Gini"), topk=0):
    s = torch.from_numpy(scores)
    return evaluate_full_ranking(lambda rows: s[rows], torch.from_numpy(target), torch.from_numpy(indptr),
                                 torch.from_numpy(hist), ks=KS, chunk_size=chunk, metrics=extra, topk=topk)


def test_extra_metrics_match_numpy_and_ignore_chunking():
    scores, target, indptr, hist = problem()
    ranks, lists = numpy_lists(scores, target, indptr, hist, max(KS))
    expected = numpy_metrics(ranks, lists, scores.shape[1] - 1)
    results = [run(scores, target, indptr, hist, chunk) for chunk in (1, 4, 9, 1000)]
    metrics, got_ranks = results[0]
    assert np.array_equal(got_ranks.numpy(), ranks)
    assert list(metrics) == metric_names(KS, ["Precision", "MAP", "Coverage", "Gini"])
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    for other, _ in results[1:]:
        assert other == metrics  # bit for bit, whatever the chunk size
    assert 0 < metrics["Gini@1"] < 1 and metrics["Coverage@10"] > metrics["Coverage@1"]


def test_default_metrics_keep_keys_and_values():
    scores, target, indptr, hist = problem(seed=1)
    base, _ = run(scores, target, indptr, hist, 5, extra=())
    assert list(base) == metric_names(KS)
    full, _ = run(scores, target, indptr, hist, 5)
    assert {k: full[k] for k in base} == base
    # asking for top lists too: they are the user's topk, unchanged by the metric pass
    _, _, top = run(scores, target, indptr, hist, 5, topk=2)
    _, lists = numpy_lists(scores, target, indptr, hist, 2)
    assert np.array_equal(top.numpy(), lists)
    _, _, top20 = run(scores, target, indptr, hist, 5, topk=20)
    assert np.array_equal(top20.numpy(), numpy_lists(scores, target, indptr, hist, 20)[1])


def test_gini_extremes_and_rank_only_metrics():
    acc = TopKAccumulator((2,), num_items=4)
    acc.add(np.array([[1, 2], [3, 4]]))
    assert acc.compute() == {"Coverage@2": 1.0, "Gini@2": 0.0}  # perfectly even
    acc = TopKAccumulator((1,), num_items=4)
    acc.add(np.array([[2], [2], [2]]))
    assert acc.compute()["Gini@1"] == pytest.approx(0.75)  # (n - 1) / n: one item takes every slot
    ranks = np.array([0, 1, 5, 2])
    m = metrics_from_ranks(ranks, (3,), extra=["MAP", "Precision"])
    assert m["Precision@3"] == pytest.approx(3 / 3 / 4) and m["MAP@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    with pytest.raises(ValueError, match="need the top-K lists"):
        metrics_from_ranks(ranks, (3,), extra=["Gini"])
    with pytest.raises(ValueError, match="unknown metric"):
        metrics_from_ranks(ranks, (3,), extra=["Recall"])


def test_sampled_protocol_extra_rank_metrics():
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.integers(0, 4, size=(20, 8)).astype(np.float32))
    m, ranks = evaluate_sampled(lambda rows: scores[rows], 20, ks=(1, 5), chunk_size=3, metrics=["Precision", "MAP"])
    r = ranks.numpy()
    assert m["Precision@5"] == pytest.approx((r < 5).mean() / 5) and m["MAP@5"] == pytest.approx(
        np.where(r < 5, 1 / (r + 1), 0).mean())
    with pytest.raises(ValueError, match="full-ranking top-K lists"):
        evaluate_sampled(lambda rows: scores[rows], 20, metrics=["Coverage"])
