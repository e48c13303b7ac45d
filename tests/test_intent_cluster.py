"""intent_cluster: the fused CPU op against the plain-PyTorch reference.

Values and gradients in float32 and float64 on sample inputs with left padding, fully
padded rows, K = 1, K = L, odd sizes, non-contiguous views and the BLAS path (more than
32 prototypes per row); float64 gradcheck; opcheck; an aot_eager compile smoke test; and
bad inputs that must raise with the argument's name.
"""
from __future__ import annotations

import pytest
import torch

import seqrec  # noqa: F401  (registers the ops)
from seqrec.ops import intent_cluster
from seqrec.ops.reference import intent_cluster as reference

OP = torch.ops.seqrec.intent_cluster.default
GRAD_NAMES = ("x", "prototypes", "active_scale", "weights", "values")


def left_padded_mask(lengths, n):
    lengths = torch.as_tensor(lengths)
    return torch.arange(n)[None, :] >= (n - lengths)[:, None]


def make_sample(name, dtype=torch.float64, seed=0):
    """(x, mask, prototypes, tau, kwargs) for one named sample; grads enabled on floats."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    def topk_active(b, l, k):
        return torch.rand(b, l, generator=g).argsort(dim=1)[:, :k].contiguous()

    kw = {}
    tau = 0.5
    if name == "active_w3":  # SINE: top-K with scale, per-concept weights; one empty row
        B, n, D, L, K = 4, 7, 10, 9, 4
        mask = left_padded_mask([7, 3, 0, 1], n)
        kw = dict(active=topk_active(B, L, K), active_scale=torch.sigmoid(randn(B, K)),
                  weights=rand(B, K, n))
    elif name == "active_w2_values":  # SINE with values != x, DSS-style shared weights
        B, n, D, L, K = 3, 6, 12, 11, 3
        mask = left_padded_mask([6, 4, 2], n)
        kw = dict(active=topk_active(B, L, K), weights=rand(B, n), values=randn(B, n, 5))
    elif name == "dense_none":  # DSS: softmax over all prototypes, no weights
        B, n, D, L = 3, 5, 8, 6
        mask = left_padded_mask([5, 0, 2], n)
    elif name == "dense_w3_lowtau":
        B, n, D, L = 2, 9, 16, 5
        mask = left_padded_mask([9, 4], n)
        kw = dict(weights=rand(B, L, n))
        tau = 0.07
    elif name == "k1_active":
        B, n, D, L = 3, 4, 6, 5
        mask = left_padded_mask([4, 1, 0], n)
        kw = dict(active=topk_active(B, L, 1), active_scale=rand(B, 1) + 0.5, weights=rand(B, 1, n))
    elif name == "k1_dense":  # L = 1: every real position has probability 1
        B, n, D, L = 2, 3, 7, 1
        mask = left_padded_mask([3, 2], n)
        kw = dict(weights=rand(B, n))
    elif name == "k_eq_l_active":  # K = L, repeated and permuted indices
        B, n, D, L = 3, 5, 9, 4
        mask = left_padded_mask([5, 3, 5], n)
        act = torch.stack([torch.randperm(L, generator=g) for _ in range(B)])
        act[2, 1] = act[2, 0]  # a prototype chosen twice
        kw = dict(active=act, active_scale=rand(B, L) + 0.1, weights=rand(B, L, n))
    elif name == "odd_sizes":  # D not a multiple of the vector width, n = 1
        B, n, D, L, K = 5, 1, 13, 7, 2
        mask = left_padded_mask([1, 0, 1, 1, 0], n)
        kw = dict(active=topk_active(B, L, K), weights=rand(B, n), values=randn(B, n, 3))
    elif name == "blas_dense":  # more than 32 prototypes: the products go to BLAS
        B, n, D, L = 3, 6, 8, 40
        mask = left_padded_mask([6, 0, 3], n)
        kw = dict(weights=rand(B, n), values=randn(B, n, 4))
    elif name == "blas_active":
        B, n, D, L, K = 2, 5, 6, 50, 36
        mask = left_padded_mask([5, 2], n)
        kw = dict(active=topk_active(B, L, K), active_scale=rand(B, K) + 0.5, weights=rand(B, K, n))
    elif name == "noncontig":  # x, weights and values as strided views
        B, n, D, L, K = 3, 6, 10, 8, 3
        mask = left_padded_mask([6, 2, 4], n)
        x = randn(n, B, 2 * D).transpose(0, 1)[:, :, ::2]
        kw = dict(active=topk_active(B, L, K), weights=rand(B, n, K).transpose(1, 2),
                  values=randn(B, 4, n).transpose(1, 2))
        protos = randn(D, L).t()
        return _finish(x, mask, protos, tau, kw)
    else:
        raise KeyError(name)
    x = randn(B, n, D) * 3 + 1
    protos = randn(L, D)
    return _finish(x, mask, protos, tau, kw)


def _finish(x, mask, protos, tau, kw):
    x = x.detach().requires_grad_()
    protos = protos.detach().requires_grad_()
    for key in ("active_scale", "weights", "values"):
        if key in kw:
            kw[key] = kw[key].detach().requires_grad_()
    return x, mask, protos, tau, kw


SAMPLES = ["active_w3", "active_w2_values", "dense_none", "dense_w3_lowtau", "k1_active",
           "k1_dense", "k_eq_l_active", "odd_sizes", "blas_dense", "blas_active", "noncontig"]


def leaves_of(x, protos, kw):
    leaves = {"x": x, "prototypes": protos}
    leaves.update({k: kw[k] for k in ("active_scale", "weights", "values") if k in kw})
    return leaves


def run_both(fn, sample, grad_seed=1):
    x, mask, protos, tau, kw = sample
    intents, probs = fn(x, mask, protos, tau, **kw)
    g = torch.Generator().manual_seed(grad_seed)
    gi = torch.randn(intents.shape, generator=g, dtype=intents.dtype)
    gp = torch.randn(probs.shape, generator=g, dtype=probs.dtype)
    leaves = leaves_of(x, protos, kw)
    grads = torch.autograd.grad((intents, probs), list(leaves.values()), (gi, gp))
    return intents, probs, dict(zip(leaves, grads))


TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-8)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", SAMPLES)
def test_values_and_grads_match_reference(name, dtype):
    sample = make_sample(name, dtype)
    i1, p1, g1 = run_both(intent_cluster, sample)
    i2, p2, g2 = run_both(reference, sample)
    tol = TOL[dtype]
    torch.testing.assert_close(p1, p2, **tol)
    torch.testing.assert_close(i1, i2, **tol)
    assert g1.keys() == g2.keys()
    grad_tol = dict(atol=tol["atol"] * 20, rtol=tol["rtol"] * 10)
    for key in g1:
        torch.testing.assert_close(g1[key], g2[key], **grad_tol, msg=lambda m, k=key: f"grad {k}: {m}")


@pytest.mark.parametrize("backend", ["seqrec", "reference"])
@pytest.mark.parametrize("name", ["active_w3", "blas_dense", "dense_none"])
def test_padding_gives_zeros_and_no_nan(name, backend):
    # One contract on both backends (issue 23 item 6: the reference used to return NaN
    # where the op returned the documented zeros).
    x, mask, protos, tau, kw = make_sample(name)
    # Padded rows of x, values and weights hold garbage (even inf / NaN): nothing of it
    # may leak, also on the BLAS path (blas_dense: 40 prototypes, values given).
    with torch.no_grad():
        x[~mask] = float("inf")
        x[~mask.any(dim=1)] = float("nan")  # an all-padding row entirely NaN
        if "values" in kw:
            kw["values"][~mask] = float("nan")
        w = kw.get("weights")
        if w is not None:
            w[~mask.view(mask.shape[0], *([1] * (w.dim() - 2)), -1).expand_as(w)] = float("nan")

    def fn(*args, **kwargs):
        return intent_cluster(*args, backend=backend, **kwargs)

    intents, probs, grads = run_both(fn, (x, mask, protos, tau, kw))
    other = run_both(lambda *a, **k: intent_cluster(*a, backend="seqrec", **k), (x, mask, protos, tau, kw))
    torch.testing.assert_close(intents, other[0], **TOL[torch.float64])
    torch.testing.assert_close(probs, other[1], **TOL[torch.float64])
    empty = (~mask).all(dim=1)
    assert empty.any()
    assert torch.all(intents[empty] == 0) and torch.all(probs[empty] == 0)
    assert torch.isfinite(intents).all()
    assert torch.all(probs[~mask] == 0)
    real = probs[mask]
    torch.testing.assert_close(real.sum(-1), torch.ones(len(real), dtype=real.dtype))
    for key, g in grads.items():
        assert torch.isfinite(g).all(), key
    assert torch.all(grads["x"][~mask] == 0)
    gw = grads.get("weights")
    if gw is not None:
        assert torch.all(gw[~mask.view(mask.shape[0], *([1] * (gw.dim() - 2)), -1).expand_as(gw)] == 0)
    for key, g in grads.items():
        torch.testing.assert_close(g, other[2][key], atol=1e-8, rtol=1e-6, msg=lambda m, k=key: f"grad {k}: {m}")


def test_k_equal_l_active_equals_dense():
    # Selecting every prototype in order is the dense op.
    x, mask, protos, tau, kw = make_sample("dense_w3_lowtau")
    L = protos.shape[0]
    active = torch.arange(L).expand(x.shape[0], L).contiguous()
    i1, p1 = intent_cluster(x, mask, protos, tau, weights=kw["weights"])
    i2, p2 = intent_cluster(x, mask, protos, tau, active=active, weights=kw["weights"])
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(i1, i2)


def test_positive_active_scale_changes_nothing():
    # Documented: LN + L2 normalisation is scale-invariant, so a positive active_scale
    # leaves both outputs unchanged and gets a (numerically) zero gradient.
    x, mask, protos, tau, kw = make_sample("active_w3")
    i1, p1 = intent_cluster(x, mask, protos, tau, **kw)
    i2, p2 = intent_cluster(x, mask, protos, tau, **{**kw, "active_scale": kw["active_scale"] * 7.5})
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(i1, i2)
    (g,) = torch.autograd.grad((i1.square().sum() + p1.square().sum()), [kw["active_scale"]])
    assert g.abs().max() < 1e-10


def test_weights_absent_means_ones():
    x, mask, protos, tau, kw = make_sample("dense_none")
    ones = torch.ones(x.shape[:2], dtype=x.dtype)
    i1, p1 = intent_cluster(x, mask, protos, tau)
    i2, p2 = intent_cluster(x, mask, protos, tau, weights=ones)
    torch.testing.assert_close(i1, i2)
    torch.testing.assert_close(i1, p1.transpose(1, 2) @ x)


@pytest.mark.parametrize("wanted", [("prototypes",), ("x",), ("weights", "active_scale")])
def test_partial_requires_grad_and_unused_output(wanted):
    # Only some inputs need grad, and only intents feed the loss (grad of probs absent).
    x, mask, protos, tau, kw = make_sample("active_w3")
    leaves = leaves_of(x, protos, kw)
    for key, t in leaves.items():
        t.requires_grad_(key in wanted)
    results = []
    for fn in (intent_cluster, reference):
        intents, _ = fn(x, mask, protos, tau, **kw)
        results.append(torch.autograd.grad(intents.square().sum(), [leaves[k] for k in wanted]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_backward_is_deterministic():
    sample = make_sample("blas_dense", torch.float32)
    _, _, g1 = run_both(intent_cluster, sample)
    _, _, g2 = run_both(intent_cluster, sample)
    for key in g1:
        assert torch.equal(g1[key], g2[key]), key


def test_autograd_saves_no_intermediates():
    # Only inputs and probs [B, n, K] are kept for the backward, never [B, n, L] or [B, n, D]
    # intermediates.
    x, mask, protos, tau, kw = make_sample("active_w3")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _, probs = intent_cluster(x, mask, protos, tau, **kw)
    inputs = [x, mask, protos, probs, kw["active"], kw["active_scale"], kw["weights"]]
    assert len(saved) == len(inputs)
    assert all(any(s is t or s.data_ptr() == t.data_ptr() and s.shape == t.shape for t in inputs)
               for s in saved)


def test_empty_batch_and_backend_switch():
    x = torch.zeros(0, 4, 6, requires_grad=True)
    mask = torch.zeros(0, 4, dtype=torch.bool)
    protos = torch.randn(5, 6, requires_grad=True)
    intents, probs = intent_cluster(x, mask, protos, 0.2)
    assert intents.shape == (0, 5, 6) and probs.shape == (0, 4, 5)
    (intents.sum() + probs.sum()).backward()
    assert torch.all(protos.grad == 0)
    x, mask, protos, tau, kw = make_sample("active_w2_values")
    a = intent_cluster(x, mask, protos, tau, backend="reference", **kw)
    b = reference(x, mask, protos, tau, **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["active_w3", "active_w2_values", "dense_w3_lowtau", "k1_dense"])
def test_gradcheck(name):
    x, mask, protos, tau, kw = make_sample(name, torch.float64, seed=3)
    keys = [k for k in ("active_scale", "weights", "values") if k in kw]
    active = kw.get("active")

    def fn(x, protos, *rest):
        extra = dict(zip(keys, rest))
        return intent_cluster(x, mask, protos, tau, active=active, **extra)

    assert torch.autograd.gradcheck(fn, (x, protos, *[kw[k] for k in keys]), atol=1e-6, rtol=1e-5)


def op_args(sample):
    x, mask, protos, tau, kw = sample
    return (x, mask, protos, tau, kw.get("active"), kw.get("active_scale"), kw.get("weights"),
            kw.get("values"), 1e-5)


@pytest.mark.parametrize("name", ["active_w3", "active_w2_values", "dense_none", "noncontig"])
def test_opcheck(name):
    torch.library.opcheck(OP, op_args(make_sample(name, torch.float32)))


def test_opcheck_backward_op():
    x, mask, protos, tau, kw = make_sample("active_w3", torch.float32)
    intents, probs = OP(*op_args((x, mask, protos, tau, kw)))
    args = (torch.randn_like(intents), torch.randn_like(probs), x.detach(), mask, protos.detach(),
            probs.detach(), tau, kw["active"], kw["active_scale"].detach(), kw["weights"].detach(),
            None, 1e-5, [True, True, False, True, False])
    torch.library.opcheck(torch.ops.seqrec.intent_cluster_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_aot_eager_smoke():
    x, mask, protos, tau, kw = make_sample("active_w3", torch.float32)

    def loss_fn(x, protos, scale, weights):
        intents, probs = intent_cluster(x, mask, protos, tau, active=kw["active"],
                                        active_scale=scale, weights=weights)
        return intents.square().sum() + (probs * torch.arange(probs.shape[-1])).sum()

    args = (x, protos, kw["active_scale"], kw["weights"])
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(loss_fn(*args), args)
    compiled_grads = torch.autograd.grad(compiled(*args), args)
    for a, b in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(a, b)


def test_bad_inputs_raise_naming_the_argument():
    x, mask, protos, tau, kw = make_sample("active_w3", torch.float32)
    B, n, D = x.shape
    L = protos.shape[0]
    bad_active = kw["active"].clone()
    bad_active[1, 2] = L
    cases = [
        (dict(active=bad_active), r"'active' holds index 9 .* outside \[0, 9\)"),
        (dict(active=-kw["active"] - 1), r"'active' holds index -"),
        (dict(prototypes=torch.randn(L, D + 1)), r"'prototypes' must have shape \[L, 10\]"),
        (dict(tau=0.0), r"'tau' must be positive"),
        (dict(tau=-1.0), r"'tau' must be positive"),
        (dict(mask=mask[:, 1:]), r"'mask' must have shape \[B, n\]"),
        (dict(mask=mask.float()), r"'mask' must have dtype Bool"),
        (dict(weights=torch.rand(B, n + 1)), r"'weights' must have shape"),
        (dict(active=kw["active"], active_scale=torch.rand(B, 2)), r"'active_scale' must have the shape"),
        (dict(active=None, active_scale=torch.rand(B, 4), weights=None), r"'active_scale' needs 'active'"),
        (dict(values=torch.randn(B, n + 2, 3)), r"'values' must have shape \[B, n, Dv\]"),
        (dict(x=x.detach().double()), r"'prototypes' must have dtype Double"),
        (dict(x=x.detach().half(), prototypes=protos.detach().half()), r"'x' must be float32 or float64"),
        (dict(x=x.detach()[0]), r"'x' must be 3-dimensional"),
        (dict(eps=0.0), r"'eps' must be positive"),
    ]
    base = dict(x=x.detach(), mask=mask, prototypes=protos.detach(), tau=tau, active=kw["active"],
                active_scale=None, weights=kw["weights"].detach(), values=None, eps=1e-5)
    for change, pattern in cases:
        a = {**base, **change}
        with pytest.raises(RuntimeError, match=pattern):
            OP(a["x"], a["mask"], a["prototypes"], a["tau"], a["active"], a["active_scale"],
               a["weights"], a["values"], a["eps"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["active_w2_values", "dense_w3_lowtau"])
def test_half_inputs_accumulate_in_float32(name, dtype):
    """bf16 / fp16 inputs (autocast) are accepted; against the float64 reference of the
    same rounded inputs, the op's error (outputs and gradients) is at most ~2x that of
    the plain-PyTorch reference run in the half dtype (STYLE.md's tolerance rule)."""
    x, mask, protos, tau, kw = make_sample(name, torch.float32)

    def inputs(to):
        leaves = {"x": x, "prototypes": protos, **{k: v for k, v in kw.items() if k != "active"}}
        out = {k: v.detach().to(dtype).to(to).requires_grad_() for k, v in leaves.items()}
        if "active" in kw:
            out["active"] = kw["active"]
        return out

    def run(a, backend):
        names = [k for k in a if k != "active"]
        intents, probs = intent_cluster(a["x"], mask, a["prototypes"], tau, backend=backend,
                                        **{k: v for k, v in a.items() if k not in ("x", "prototypes")})
        g = torch.Generator().manual_seed(4)
        gi = torch.randn(intents.shape, generator=g, dtype=torch.float64).to(intents.dtype)
        gp = torch.randn(probs.shape, generator=g, dtype=torch.float64).to(probs.dtype)
        return (intents, probs), torch.autograd.grad((intents, probs), [a[k] for k in names], (gi, gp))

    want, want_g = run(inputs(torch.float64), "reference")
    got, got_g = run(inputs(dtype), "seqrec")
    eager, eager_g = run(inputs(dtype), "reference")
    assert all(t.dtype == dtype for t in (*got, *got_g))

    def err(a, b):
        return (a.double() - b).abs().max().item()

    for g, e, w in zip((*got, *got_g), (*eager, *eager_g), (*want, *want_g)):
        eager_err = err(e, w)
        if eager_err != eager_err:
            # The eager float16 reference itself overflows to NaN (layer norm / normalise
            # in float16), which is why the op accumulates in float32: then a bound of a
            # few float16 ulps of the largest value stands in for it.
            eager_err = 2 * torch.finfo(dtype).eps * (1 + w.abs().max().item())
        assert err(g, w) <= 2 * eager_err + 1e-6
