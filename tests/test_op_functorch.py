"""torch.func transforms over the operators (issue 24 item 4).

The wrappers run each differentiable op through an ``autograd.Function`` in the
setup_context form, and every op has a batching rule (``register_loop_vmap``): grad,
jacrev and vmap of every op equal plain autograd / a Python loop. Before, grad failed
with "must override the setup_context staticmethod" and vmap with "Batching rule not
implemented for seqrec::dif_attention".
"""
from __future__ import annotations

import pytest
import torch

from seqrec import ops

g = torch.Generator().manual_seed(0)


def r(*shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


MASK = torch.tensor([[False, True, True], [True, True, True]])
Q, K, V, SQ, SK = r(2, 1, 3, 4), r(2, 1, 3, 4), r(2, 1, 3, 4), r(2, 1, 3, 2), r(2, 1, 3, 2)
FP = ops.init_fusion_params("gate", 3, 2, dtype=torch.float64, generator=g)
X, PROTOS = r(2, 3, 5), r(4, 5)


def dif(q, sq):
    return ops.dif_attention(q, K, V, [sq], [SK], fusion="gate", fusion_params=FP, key_padding_mask=MASK)


def ic(x, protos):
    return ops.intent_cluster(x, MASK, protos, 0.5, weights=MASK.double())[0]


def drop(x):
    return ops.dropout(x, 0.4, seed=7)


CASES = {"dif_attention": (dif, (Q, SQ)), "intent_cluster": (ic, (X, PROTOS)), "dropout": (drop, (X,))}


def _autograd_grads(fn, args):
    leaves = [a.clone().requires_grad_() for a in args]
    return torch.autograd.grad(fn(*leaves).square().sum(), leaves)


@pytest.mark.parametrize("name", sorted(CASES))
def test_func_grad_equals_autograd(name):
    fn, args = CASES[name]
    got = torch.func.grad(lambda *a: fn(*a).square().sum(), argnums=tuple(range(len(args))))(*args)
    for a, b in zip(got, _autograd_grads(fn, args)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_func_jacrev_equals_autograd_jacobian(name):
    fn, args = CASES[name]
    first = args[0]
    got = torch.func.jacrev(lambda a: fn(a, *args[1:]))(first)
    want = torch.autograd.functional.jacobian(lambda a: fn(a, *args[1:]), first)
    torch.testing.assert_close(got, want)


def test_vmap_equals_a_loop():
    # A leading mapped dimension over each op's own batch of one.
    qs, ks, vs = (t.unsqueeze(1) for t in (Q, K, V))
    got = torch.func.vmap(lambda q, k, v: ops.dif_attention(q, k, v))(qs, ks, vs)
    want = torch.stack([ops.dif_attention(q, k, v) for q, k, v in zip(qs, ks, vs)])
    torch.testing.assert_close(got, want)

    xs = X.unsqueeze(1)
    masks = MASK.unsqueeze(1)
    got = torch.func.vmap(lambda x, m: ops.intent_cluster(x, m, PROTOS, 0.5))(xs, masks)
    for i in range(len(xs)):
        want = ops.intent_cluster(xs[i], masks[i], PROTOS, 0.5)
        torch.testing.assert_close(got[0][i], want[0])
        torch.testing.assert_close(got[1][i], want[1])

    # Same seed, same mask per slice: vmap means map.
    got = torch.func.vmap(lambda x: ops.dropout(x, 0.5, seed=3))(X)
    torch.testing.assert_close(got, torch.stack([ops.dropout(x, 0.5, seed=3) for x in X]))

    scores = r(3, 2, 6)
    indptr, items, target = torch.tensor([0, 1, 2]), torch.tensor([1, 2]), torch.tensor([3, 4])
    top, rank = torch.func.vmap(lambda s: ops.rank_topk(s, indptr, items, target, 2))(scores)
    for i in range(3):
        t, rk = ops.rank_topk(scores[i], indptr, items, target, 2)
        assert torch.equal(top[i], t) and torch.equal(rank[i], rk)


def test_vmap_of_grad_per_sample_gradients():
    # Per-sample gradients, the usual reason for vmap(grad): through the backward ops'
    # batching rules.
    def loss(q, k, v):
        return ops.dif_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)).square().sum()

    got = torch.func.vmap(torch.func.grad(loss))(Q, K, V)
    want = []
    for i in range(len(Q)):
        q = Q[i].clone().requires_grad_()
        want.append(torch.autograd.grad(loss(q, K[i], V[i]), q)[0])
    want = torch.stack(want)
    torch.testing.assert_close(got, want)
