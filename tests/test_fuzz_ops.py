"""Fuzz: every operator against its plain-PyTorch reference on random small inputs.

For each draw (shapes, masks, values, options) the compiled op and the reference either
agree (values within tolerance, gradients too where differentiable) or both raise a
RuntimeError / ValueError; never a crash, never one silent and the other raising.
A few seconds by default (a fixed, derandomised set of examples per op);
``SEQREC_FUZZ_EXAMPLES=N`` runs N random examples per op instead.
"""
from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from seqrec import ops  # noqa: E402
from seqrec.ops.reference.dif_attention import FUSIONS  # noqa: E402

_EXAMPLES = os.environ.get("SEQREC_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_EXAMPLES) if _EXAMPLES else 15, derandomize=_EXAMPLES is None,
                deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLEAR_ERRORS = (RuntimeError, ValueError)
TOL = dict(atol=1e-9, rtol=1e-7)  # float64 throughout


def both(fn):
    """(result or exception) of fn("seqrec") and fn("reference"); anything but a clear
    error propagates (and fails the test)."""
    results = []
    for backend in ("seqrec", "reference"):
        try:
            results.append(fn(backend))
        except CLEAR_ERRORS as e:
            results.append(e)
    a, b = results
    if isinstance(a, Exception) or isinstance(b, Exception):
        assert isinstance(a, Exception) and isinstance(b, Exception), (
            f"one backend raised and the other did not: seqrec={a!r}, reference={b!r}")
        return None
    return a, b


def assert_close(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y)
    elif a is None or b is None:
        assert a is None and b is None
    else:
        torch.testing.assert_close(a, b, **TOL)


def tensor(data, shape, dtype=torch.float64):
    """A tensor of ``shape`` from a flat list drawn by hypothesis (cycled)."""
    n = 1
    for s in shape:
        n *= s
    flat = [data[i % len(data)] for i in range(n)] if data else [0.0] * n
    return torch.tensor(flat, dtype=dtype).reshape(shape)


floats = st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=1, max_size=40)


@st.composite
def left_padded_mask(draw, b, n, allow_empty=True):
    lengths = draw(st.lists(st.integers(0 if allow_empty else 1, n), min_size=b, max_size=b))
    return torch.arange(n)[None, :] >= (n - torch.tensor(lengths, dtype=torch.long))[:, None]


@FUZZ
@given(st.data())
def test_fuzz_dif_attention(data):
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    causal = data.draw(st.booleans())
    nq = data.draw(st.integers(1, 5))
    nk = nq if causal else data.draw(st.integers(1, 5))
    dh, dv = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    side_dims = data.draw(st.lists(st.integers(1, 3), max_size=2))
    fusion = data.draw(st.sampled_from(FUSIONS))
    vals = data.draw(floats)
    q, k = tensor(vals, (B, H, nq, dh)), tensor(vals[::-1], (B, H, nk, dh)) * 0.7
    v = tensor(vals, (B, H, nk, dv)) * -0.3
    side_q = [tensor(vals, (B, H, nq, d)) * 0.5 for d in side_dims]
    side_k = [tensor(vals[1:] or vals, (B, H, nk, d)) for d in side_dims]
    params = ops.init_fusion_params(fusion, nk, 1 + len(side_dims), dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(data.draw(st.integers(0, 9))))
    mask = data.draw(left_padded_mask(B, nk)) if data.draw(st.booleans()) else None
    dropout_p = data.draw(st.sampled_from([0.0, 0.0, 0.3]))
    seed = data.draw(st.integers(-(2 ** 63), 2 ** 64 - 1))
    sees_masked = data.draw(st.booleans())
    leaves = [t.requires_grad_() for t in (q, k, v, *side_q, *side_k, *params)]

    def run(backend):
        out = ops.dif_attention(q, k, v, side_q, side_k, fusion=fusion, fusion_params=params,
                                key_padding_mask=mask, causal=causal, fusion_sees_masked=sees_masked,
                                dropout_p=dropout_p, training=True, seed=seed, backend=backend)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out) * 0.5, allow_unused=True)
        return out, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]

    got = both(run)
    if got:
        (out_a, grads_a), (out_b, grads_b) = got
        assert torch.isfinite(out_a).all()
        assert_close(out_a, out_b)
        assert_close(grads_a, grads_b)


@FUZZ
@given(st.data())
def test_fuzz_intent_cluster(data):
    B, n, D, L = (data.draw(st.integers(lo, hi)) for lo, hi in ((0, 3), (1, 5), (1, 6), (1, 5)))
    vals = data.draw(floats)
    x = tensor(vals, (B, n, D)) * 2 + 0.5
    protos = tensor(vals[::-1], (L, D))
    mask = data.draw(left_padded_mask(B, n))
    tau = data.draw(st.sampled_from([0.1, 0.5, 1.0]))
    kw = {}
    K = L
    if data.draw(st.booleans()):
        K = data.draw(st.integers(1, L))
        kw["active"] = torch.tensor(data.draw(st.lists(st.integers(0, L - 1), min_size=B * K, max_size=B * K)),
                                    dtype=torch.long).reshape(B, K)
        if data.draw(st.booleans()):
            kw["active_scale"] = tensor(vals, (B, K)).abs() + 0.1
    wdim = data.draw(st.sampled_from([None, 2, 3]))
    if wdim == 2:
        kw["weights"] = tensor(vals, (B, n)).abs()
    elif wdim == 3:
        kw["weights"] = tensor(vals, (B, K, n)).abs()
    if data.draw(st.booleans()):
        kw["values"] = tensor(vals[1:] or vals, (B, n, data.draw(st.integers(1, 4))))
    # Padded positions hold garbage: both backends must ignore it.
    with torch.no_grad():
        x[~mask] = float("nan")
    float_leaves = {"x": x, "prototypes": protos,
                    **{k: v for k, v in kw.items() if k != "active"}}
    for t in float_leaves.values():
        t.requires_grad_()

    def run(backend):
        intents, probs = ops.intent_cluster(x, mask, protos, tau, backend=backend, **kw)
        grads = torch.autograd.grad((intents.sum() + (probs * probs).sum()), list(float_leaves.values()),
                                    allow_unused=True)
        return (intents, probs), [torch.zeros_like(t) if g is None else g
                                  for t, g in zip(float_leaves.values(), grads)]

    got = both(run)
    if got:
        (outs_a, grads_a), (outs_b, grads_b) = got
        assert all(torch.isfinite(t).all() for t in outs_a)
        assert_close(outs_a, outs_b)
        # active_scale's gradient is zero up to rounding (the normalisation cancels it):
        # compare it absolutely only.
        for name, ga, gb in zip(float_leaves, grads_a, grads_b):
            if name == "active_scale":
                torch.testing.assert_close(ga, gb, atol=1e-6, rtol=0)
            else:
                torch.testing.assert_close(ga, gb, atol=1e-7, rtol=1e-6)


@FUZZ
@given(st.data())
def test_fuzz_rank_topk(data):
    U, I = data.draw(st.integers(0, 4)), data.draw(st.integers(1, 10))
    # Small integer scores: many ties, the case the tie rule is for.
    scores = torch.tensor(data.draw(st.lists(st.integers(-3, 3), min_size=U * I, max_size=U * I)),
                          dtype=data.draw(st.sampled_from([torch.float32, torch.float64]))).reshape(U, I)
    counts = data.draw(st.lists(st.integers(0, 3), min_size=U, max_size=U))
    indptr = torch.tensor([0] + list(torch.tensor(counts, dtype=torch.long).cumsum(0).tolist()), dtype=torch.long)
    nnz = int(indptr[-1])
    # Ids mostly in range; sometimes one out of range, which both must refuse.
    hi = I if data.draw(st.integers(0, 9)) else I + 2
    items = torch.tensor(data.draw(st.lists(st.integers(0, hi - 1), min_size=nnz, max_size=nnz)), dtype=torch.long)
    target = torch.tensor(data.draw(st.lists(st.integers(1, max(I - 1, 1)), min_size=U, max_size=U)),
                          dtype=torch.long)
    k = data.draw(st.integers(0, 12))
    exclude = data.draw(st.booleans())
    got = both(lambda b: ops.rank_topk(scores, indptr, items, target, k, exclude, backend=b))
    if got:
        (top_a, rank_a), (top_b, rank_b) = got
        assert torch.equal(top_a, top_b) and torch.equal(rank_a, rank_b)
        assert top_a.shape == (U, max(min(k, I - 1), 0))
    got = both(lambda b: ops.rank_sampled(scores, backend=b))
    if got:
        assert torch.equal(*got)


@FUZZ
@given(st.data())
def test_fuzz_seq_mask(data):
    B, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 6))
    num_items = data.draw(st.integers(1, 8))
    rows = []
    for _ in range(B):
        length = data.draw(st.integers(0, n))
        rows.append([0] * (n - length) + data.draw(st.lists(st.integers(1, num_items), min_size=length,
                                                            max_size=length)))
    seq = torch.tensor(rows, dtype=torch.long)
    attrs = None
    if data.draw(st.booleans()):
        A = data.draw(st.integers(0, 3))
        attrs = torch.tensor(data.draw(st.lists(st.integers(0, 5), min_size=(num_items + 1) * A,
                                                max_size=(num_items + 1) * A)), dtype=torch.long)
        attrs = attrs.reshape(num_items + 1, A)
    kw = dict(num_items=num_items, mask_token=num_items + 1, mask_prob=data.draw(st.sampled_from([0.0, 0.2, 1.0])),
              seed=data.draw(st.integers(-(2 ** 63), 2 ** 64 - 1)), mask_last=data.draw(st.booleans()))
    got = both(lambda b: ops.seq_mask(seq, item_attributes=attrs, backend=b, **kw))
    if got:
        for a, b in zip(*got):
            assert torch.equal(a, b)


@FUZZ
@given(st.data())
def test_fuzz_dropout(data):
    shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=3)))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    x = tensor(data.draw(floats), shape, dtype=dtype)
    p = data.draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]))
    seed = data.draw(st.integers(-(2 ** 63), 2 ** 64 - 1))
    got = both(lambda b: ops.dropout(x, p, seed=seed, backend=b))
    if got:
        assert torch.equal(*got)
