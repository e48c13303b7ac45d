"""softmax_nll: values and gradients against F.cross_entropy (uniform and per-row output
gradients, float32/float64, empty input), gradcheck, bad inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqrec.models.losses import softmax_nll


def _inputs(n, v, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=gen, dtype=dtype) * 0.3).requires_grad_()
    target = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, v, d", [(1, 3, 2), (37, 120, 16), (300, 1000, 64), (0, 50, 8)])
@pytest.mark.parametrize("reduction", ["sum", "per-row"])
def test_matches_cross_entropy(dtype, n, v, d, reduction):
    hidden, weight, target = _inputs(n, v, d, dtype)
    got = softmax_nll(hidden, weight, target)
    want = F.cross_entropy(hidden @ weight.t(), target, reduction="none")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, want, **tol)
    # "sum": every row gets the same gradient factor (the scaled fast path);
    # "per-row": random weights per row.
    g = torch.full((n,), 0.7, dtype=dtype) if reduction == "sum" else torch.rand(n, dtype=dtype) - 0.3
    got_grads = torch.autograd.grad(got, (hidden, weight), g)
    want_grads = torch.autograd.grad(want, (hidden, weight), g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, **tol)


def test_gradcheck_and_one_sided_gradients():
    hidden, weight, target = _inputs(9, 13, 4, torch.float64)
    assert torch.autograd.gradcheck(lambda h, w: softmax_nll(h, w, target), (hidden, weight))
    # Only one input needing a gradient.
    frozen = weight.detach()
    (g,) = torch.autograd.grad(softmax_nll(hidden, frozen, target).sum(), hidden)
    (want,) = torch.autograd.grad(F.cross_entropy(hidden @ frozen.t(), target, reduction="sum"), hidden)
    torch.testing.assert_close(g, want)


def test_backward_twice_with_retain_graph():
    hidden, weight, target = _inputs(5, 7, 3, torch.float64)
    loss = softmax_nll(hidden, weight, target).sum()
    (a,) = torch.autograd.grad(loss, hidden, retain_graph=True)
    (b,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(a, b)  # the saved log-probabilities are not modified


def test_bad_inputs():
    hidden, weight, target = _inputs(4, 6, 3, torch.float32)
    with pytest.raises(ValueError, match="hidden must be \\[N, D\\] and weight \\[V, D\\]"):
        softmax_nll(hidden, weight[:, :2], target)
    with pytest.raises(ValueError, match="target must be int64 \\[N=4\\]"):
        softmax_nll(hidden, weight, target[:3])
    with pytest.raises(ValueError, match="target must be int64"):
        softmax_nll(hidden, weight, target.int())
