"""dif_attention: the compiled op against the plain-PyTorch reference (values and gradients
in every fusion mode, with/without side sources, causal/bidirectional, padding, strided
inputs, float32/float64), gradcheck, opcheck, dropout statistics, compile, bad inputs."""
from __future__ import annotations

import itertools
import zlib

import pytest
import torch

import seqrec.ops as ops
from seqrec.ops import dif_attention, init_fusion_params, reference
from seqrec.ops.reference.dif_attention import dropout_keep_mask

FUSIONS = ["sum", "concat", "gate"]
TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}


# ---------------------------------------------------------------- samples
def padding_mask(kind: str, B: int, n: int, gen: torch.Generator) -> torch.Tensor | None:
    """None, or a [B, n] bool mask: 'left' = left padding with one all-padding row and one
    full row; 'holes' = arbitrary holes (not a prefix), one all-padding row."""
    if kind == "none":
        return None
    if kind == "left":
        lengths = torch.randint(1, n + 1, (B,), generator=gen)
        lengths[0] = 0
        if B > 2:
            lengths[-1] = n
        return torch.arange(n)[None, :] >= (n - lengths)[:, None]
    mask = torch.rand(B, n, generator=gen) < 0.6
    mask[0] = False
    if B > 1:
        mask[1, -1] = True
    return mask


def strided(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as x [B, H, n, d] in another memory layout."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "heads":  # [B, n, H*d] projection viewed as heads, as models pass it
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "sliced":  # column stride 2 and a storage offset
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1] + 1, dtype=x.dtype)
        wide[..., 1::2] = x
        return wide[..., 1::2]
    raise AssertionError(layout)


def make_case(*, B=3, H=2, nq=7, nk=None, dh=4, dv=5, side_dims=(), shared_first=False, fusion="sum",
              causal=True, padding="left", dtype=torch.float64, layout="contiguous", seed=0, gate_hidden=6):
    """Leaf tensors for one call: q, k, v, side_q, side_k, fusion params and the mask."""
    nk = nq if nk is None else nk
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    q, k, v = (strided(rnd(B, H, n, d), layout).requires_grad_()
               for n, d in ((nq, dh), (nk, dh), (nk, dv)))
    side_q, side_k = [], []
    for i, d in enumerate(side_dims):
        if i == 0 and shared_first:  # DIF-SR's position scores: [H, n, d], shared by the batch
            side_q.append(rnd(H, nq, d).requires_grad_())
            side_k.append(rnd(H, nk, d).requires_grad_())
        else:
            side_q.append(strided(rnd(B, H, nq, d), layout).requires_grad_())
            side_k.append(strided(rnd(B, H, nk, d), layout).requires_grad_())
    params = [t.to(dtype).mul(3.0).requires_grad_()  # * 3: gates far from uniform
              for t in init_fusion_params(fusion, nk, 1 + len(side_dims), hidden=gate_hidden,
                                          dtype=torch.float64, generator=gen)]
    kpm = padding_mask(padding, B, nk, gen)
    return dict(q=q, k=k, v=v, side_q=side_q, side_k=side_k, fusion=fusion, fusion_params=params,
                key_padding_mask=kpm, causal=causal)


def leaves(case):
    return [case["q"], case["k"], case["v"], *case["side_q"], *case["side_k"], *case["fusion_params"]]


def run(case, backend, grad_out=None, **kw):
    out = dif_attention(**case, backend=backend, **kw)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grad_out = grad_out.to(out.dtype)
    inputs = leaves(case)
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return out, [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)], grad_out


def assert_matches_reference(case, **kw):
    out, grads, g = run(case, "seqrec", **kw)
    ref_out, ref_grads, _ = run(case, "reference", grad_out=g, **kw)
    tol = TOL[out.dtype]
    assert out.dtype == case["q"].dtype and out.shape == ref_out.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, **tol)
    names = ["q", "k", "v"] + [f"side_q[{i}]" for i in range(len(case["side_q"]))] + \
        [f"side_k[{i}]" for i in range(len(case["side_k"]))] + \
        [f"fusion_params[{i}]" for i in range(len(case["fusion_params"]))]
    for name, a, b in zip(names, grads, ref_grads):
        assert a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        # fusion-parameter gradients sum over every (b, h, i): scale the tolerance
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=name)
    return out, grads


# ---------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("padding", ["none", "left", "holes"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sides", ["none", "pos", "pos+attrs"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_matches_reference(fusion, sides, causal, padding, dtype):
    # side head sizes differ from the item's (4) and from each other (3, 2, 6)
    side_dims = {"none": (), "pos": (4,), "pos+attrs": (3, 2, 6)}[sides]
    case = make_case(fusion=fusion, side_dims=side_dims, shared_first=sides != "none", causal=causal,
                     padding=padding, dtype=dtype, seed=zlib.crc32(repr((fusion, sides, causal, padding)).encode()) % 1000)
    assert_matches_reference(case)


@pytest.mark.parametrize("layout", ["heads", "sliced"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_strided_inputs(fusion, layout):
    case = make_case(fusion=fusion, side_dims=(3, 2), shared_first=True, layout=layout, B=4, H=3, nq=9)
    assert not case["q"].is_contiguous()
    out, grads = assert_matches_reference(case)
    contiguous = {k: ([t.detach().contiguous().requires_grad_() for t in v] if isinstance(v, list) else
                      v.detach().contiguous().requires_grad_() if isinstance(v, torch.Tensor) and v.requires_grad
                      else v) for k, v in case.items()}
    out_c, grads_c, _ = run(contiguous, "seqrec")
    torch.testing.assert_close(out, out_c, rtol=0, atol=1e-12)
    for a, b in zip(grads, grads_c):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # gradients come back in the input's layout (no copy by autograd / the projection)
    assert grads[0].stride() == case["q"].stride() or layout == "sliced"


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_sees_masked(fusion):
    """DIF-SR's code: the fusion maps read every raw score (masked ones included)."""
    case = make_case(fusion=fusion, side_dims=(3, 5), padding="holes", causal=True)
    assert_matches_reference(case, fusion_sees_masked=True)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cross_attention_shapes(fusion):
    """Bidirectional with nq != nk, dv != dh, one head, a single query and key."""
    assert_matches_reference(make_case(fusion=fusion, side_dims=(2,), causal=False, nq=3, nk=8, dh=6, dv=1, H=1))
    assert_matches_reference(make_case(fusion=fusion, side_dims=(2,), causal=True, nq=1, B=2, padding="none"))


def test_lengths_one_and_max():
    """Left padding with every length 1..n in one batch (trimmed blocks of every size)."""
    n = 6
    for fusion in FUSIONS:
        case = make_case(fusion=fusion, B=n + 1, nq=n, side_dims=(3,), padding="none")
        case["key_padding_mask"] = torch.arange(n)[None, :] >= (n - torch.arange(n + 1))[:, None]
        assert_matches_reference(case)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_all_padding_rows_are_zero(fusion, causal):
    case = make_case(fusion=fusion, side_dims=(3,), causal=causal, padding="left", dtype=torch.float32)
    out, grads, _ = run(case, "seqrec")
    kpm = case["key_padding_mask"]
    assert not kpm[0].any()
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # a row with no real key
    for g in grads[:3 + 2 * len(case["side_q"])]:
        if g.dim() == 4:
            assert torch.equal(g[0], torch.zeros_like(g[0]))
            assert torch.isfinite(g).all()
    if causal:  # queries before the first real key (left padding) output exactly 0
        for b in range(1, kpm.shape[0]):
            first = int(kpm[b].int().argmax())
            assert torch.equal(out[b, :, :first], torch.zeros_like(out[b, :, :first]))


@pytest.mark.parametrize("fusion", ["concat", "gate"])
def test_no_leak_from_future_or_padding_keys(fusion):
    """With fusion_sees_masked=False (default), changing future / padded keys changes
    nothing, even through the concat / gate maps that mix whole score rows."""
    case = make_case(fusion=fusion, side_dims=(3,), causal=True, padding="left", B=4, nq=8)
    out = dif_attention(**case).detach()
    kpm = case["key_padding_mask"]
    t = 4
    perturbed = dict(case)
    for name in ("k", "v"):
        x = case[name].detach().clone()
        x[:, :, t + 1:] += 5.0  # future of query t
        x[~kpm[:, None, :, None].expand_as(x)] = 7.0  # padding keys
        perturbed[name] = x
    sk = case["side_k"][0].detach().clone()
    sk[:, :, t + 1:] -= 3.0
    perturbed["side_k"] = [sk]
    out2 = dif_attention(**perturbed).detach()
    torch.testing.assert_close(out2[:, :, :t + 1], out[:, :, :t + 1], rtol=1e-12, atol=1e-12)
    # ... while DIF-SR's own masking (fusion_sees_masked=True) does leak the future
    a = dif_attention(**case, fusion_sees_masked=True).detach()
    b = dif_attention(**perturbed, fusion_sees_masked=True).detach()
    assert not torch.allclose(a[1:, :, t], b[1:, :, t])


def test_sum_without_sides_is_plain_causal_attention():
    """No side sources, sum fusion = ordinary softmax(q k^T / sqrt(dh)) v."""
    case = make_case(fusion="sum", padding="none", dtype=torch.float64)
    q, k, v = case["q"], case["k"], case["v"]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(dif_attention(q, k, v, causal=True), expected, rtol=1e-10, atol=1e-12)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(dif_attention(q, k, v, causal=False, scale=0.3), expected, rtol=1e-10, atol=1e-12)


def test_fusion_param_grads_do_not_depend_on_threads():
    case = make_case(fusion="gate", side_dims=(3,), B=9, H=2, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, g1, go = run(case, "seqrec")
        torch.set_num_threads(max(2, threads))
        _, g2, _ = run(case, "seqrec", grad_out=go)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_empty_batch():
    case = make_case(B=0, fusion="gate", side_dims=(2,), padding="none")
    out, grads, _ = run(case, "seqrec")
    assert out.shape == (0, 2, 7, 5)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


# ---------------------------------------------------------------- gradcheck / opcheck
@pytest.mark.parametrize("fusion", FUSIONS)
def test_gradcheck(fusion):
    case = make_case(fusion=fusion, B=2, H=2, nq=4, dh=3, dv=2, side_dims=(2, 3), shared_first=True,
                     padding="left", gate_hidden=3)
    names = ["q", "k", "v"]
    inputs = leaves(case)
    m = len(case["side_q"])

    def f(*xs):
        return dif_attention(xs[0], xs[1], xs[2], list(xs[3:3 + m]), list(xs[3 + m:3 + 2 * m]),
                             fusion=fusion, fusion_params=list(xs[3 + 2 * m:]),
                             key_padding_mask=case["key_padding_mask"], causal=True,
                             dropout_p=0.25, training=True, seed=7)
    assert names and torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def _op_samples():
    samples = []
    for fusion, (causal, sides) in itertools.product(FUSIONS, [(True, (3, 2)), (False, ())]):
        case = make_case(fusion=fusion, causal=causal, side_dims=sides, layout="heads", dtype=torch.float32,
                         B=3, nq=5, gate_hidden=4)
        side_q = [t.expand(3, -1, -1, -1) if t.dim() == 3 else t for t in case["side_q"]]
        side_k = [t.expand(3, -1, -1, -1) if t.dim() == 3 else t for t in case["side_k"]]
        seed = torch.tensor([3], dtype=torch.int64)
        args = (case["q"], case["k"], case["v"], side_q, side_k, case["fusion_params"],
                case["key_padding_mask"], seed)
        kwargs = dict(fusion=fusion, causal=causal, dropout_p=0.2 if causal else 0.0)
        samples.append((args, kwargs))
    return samples


@pytest.mark.parametrize("sample", _op_samples())
def test_opcheck(sample):
    args, kwargs = sample
    torch.library.opcheck(torch.ops.seqrec.dif_attention.default, args, kwargs)


def test_compile_aot_eager_smoke():
    case = make_case(fusion="gate", side_dims=(3,), shared_first=True, dtype=torch.float32, layout="heads")

    def step(q, k, v, pq, pk, w1, b1, w2, b2, kpm):
        out = dif_attention(q, k, v, [pq], [pk], fusion="gate", fusion_params=[w1, b1, w2, b2],
                            key_padding_mask=kpm, causal=True, dropout_p=0.1, training=True,
                            seed=torch.tensor([5]))
        return out.square().sum()

    args = [case["q"], case["k"], case["v"], case["side_q"][0], case["side_k"][0], *case["fusion_params"]]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c = compiled(*args, case["key_padding_mask"])
    grads_c = torch.autograd.grad(loss_c, args)
    loss_e = step(*args, case["key_padding_mask"])
    grads_e = torch.autograd.grad(loss_e, args)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- dropout
def _identity_case(B, H, n, dtype=torch.float64):
    """q = 0 (uniform attention over n keys, no mask) and v = identity rows: out[.., i, j]
    = keep(i, j) / (n (1 - p)), so the output exposes the dropout mask."""
    q = torch.zeros(B, H, n, 2, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, n, 2, dtype=dtype, requires_grad=True)
    v = torch.eye(n, dtype=dtype).expand(B, H, n, n).clone().requires_grad_()
    return q, k, v


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate_and_reproducibility(p):
    B, H, n = 8, 4, 32
    q, k, v = _identity_case(B, H, n)
    kw = dict(causal=False, dropout_p=p, training=True)
    out = dif_attention(q, k, v, seed=11, **kw)
    keep = out * n * (1 - p)
    assert torch.allclose(keep, keep.round(), atol=1e-9)  # every entry is 0 or 1
    keep = keep.round().bool()
    numel = keep.numel()
    rate = keep.double().mean().item()
    sigma = (p * (1 - p) / numel) ** 0.5
    assert abs(rate - (1 - p)) < 5 * sigma, (rate, 1 - p)
    # the mask is the documented hash, shared with the reference
    assert torch.equal(keep, dropout_keep_mask(11, (B, H, n, n), p))
    torch.testing.assert_close(dif_attention(q, k, v, seed=11, backend="reference", **kw), out)
    # same seed -> same mask; other seed -> another mask (rows of 32 keys: never all equal)
    assert torch.equal(dif_attention(q, k, v, seed=11, **kw), out)
    other = dif_attention(q, k, v, seed=12, **kw)
    assert not torch.equal(other, out)
    assert (other != out).double().mean() > 0.5 * 2 * p * (1 - p)
    # seed=None draws from torch's generator: torch.manual_seed makes it reproducible
    torch.manual_seed(0)
    a = dif_attention(q, k, v, **kw)
    torch.manual_seed(0)
    assert torch.equal(dif_attention(q, k, v, **kw), a)
    # training=False (eval): no dropout
    torch.testing.assert_close(dif_attention(q, k, v, causal=False, dropout_p=p, training=False) * n,
                               torch.ones(B, H, n, n, dtype=torch.float64))


def test_dropout_backward_uses_the_forward_mask():
    B, H, n, p = 2, 3, 16, 0.3
    q, k, v = _identity_case(B, H, n)
    out = dif_attention(q, k, v, causal=False, dropout_p=p, training=True, seed=5)
    keep = (out.detach() * n * (1 - p)).round()
    g = torch.randn_like(out)
    (gv,) = torch.autograd.grad(out, [v], g)
    # out = Pd v with Pd = keep / (n (1 - p)): dL/dv = Pd^T g, with the forward's mask
    expected = (keep / (n * (1 - p))).transpose(-1, -2) @ g
    torch.testing.assert_close(gv, expected, rtol=1e-12, atol=1e-12)
    # and the full backward agrees with the reference's under dropout, gate fusion included
    case = make_case(fusion="gate", side_dims=(3,), padding="left")
    assert_matches_reference(case, dropout_p=0.4, training=True, seed=9)


# ---------------------------------------------------------------- backend switch
def test_backend_switch():
    case = make_case(fusion="concat", side_dims=(2,))
    with ops.use_backend("reference"):
        a = dif_attention(**case)
    b = reference.dif_attention(**case)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        dif_attention(**case, backend="cuda")


# ---------------------------------------------------------------- bad inputs
def _op(case, **over):
    args = dict(q=case["q"], k=case["k"], v=case["v"], side_q=case["side_q"], side_k=case["side_k"],
                fusion_params=case["fusion_params"], key_padding_mask=case["key_padding_mask"], seed=None)
    kw = dict(fusion=case["fusion"], causal=case["causal"])
    for key, val in over.items():
        (kw if key in ("fusion", "causal", "dropout_p", "scale") else args)[key] = val
    return torch.ops.seqrec.dif_attention(*args.values(), **kw)


def test_bad_inputs():
    case = make_case(fusion="gate", side_dims=(3,), dtype=torch.float32)
    q = case["q"].detach()
    with pytest.raises(RuntimeError, match="'q' must be float32 or float64"):
        _op(case, q=q.to(torch.int64))
    with pytest.raises(RuntimeError, match="argument 'k'"):
        _op(case, k=case["k"].detach().double())
    with pytest.raises(RuntimeError, match="argument 'k' must be \\[B, H, nk, dh\\]"):
        _op(case, k=case["k"].detach()[..., :3])
    with pytest.raises(RuntimeError, match="argument 'v' must be \\[B, H, nk, dv\\]"):
        _op(case, v=case["v"].detach()[:, :, :5])
    with pytest.raises(RuntimeError, match="argument 'q' must be 4-dimensional"):
        _op(case, q=q[0])
    with pytest.raises(RuntimeError, match="causal attention needs as many queries as keys"):
        _op(case, q=q[:, :, :5])
    with pytest.raises(RuntimeError, match="side_k\\[0\\]' must be \\[B, H, nk, d\\]"):
        _op(case, side_k=[case["side_k"][0].detach()[..., :2]])
    with pytest.raises(RuntimeError, match="'side_q' and 'side_k' must have the same length"):
        _op(case, side_k=[])
    with pytest.raises(RuntimeError, match="fusion \"gate\" takes 4 fusion_params, got 2"):
        _op(case, fusion_params=case["fusion_params"][:2])
    with pytest.raises(RuntimeError, match="gate weight fusion_params\\[0\\] \\(W1\\) must be \\[a, nk\\]"):
        _op(case, fusion_params=[case["fusion_params"][0].detach()[:, :3]] + case["fusion_params"][1:])
    with pytest.raises(RuntimeError, match="concat weight fusion_params\\[0\\] must be \\[nk, S\\*nk\\]"):
        _op(case, fusion="concat", fusion_params=[torch.zeros(7, 7), torch.zeros(7)])
    with pytest.raises(RuntimeError, match="argument 'fusion' must be \"sum\", \"concat\" or \"gate\""):
        _op(case, fusion="max")
    with pytest.raises(RuntimeError, match="'key_padding_mask' must have dtype Bool"):
        _op(case, key_padding_mask=torch.ones(3, 7))
    with pytest.raises(RuntimeError, match="'key_padding_mask' must be \\[B, nk\\]"):
        _op(case, key_padding_mask=torch.ones(3, 6, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="'dropout_p' must be in \\[0, 1\\)"):
        _op(case, dropout_p=1.0)
    with pytest.raises(RuntimeError, match="'seed' .* is required when dropout_p > 0"):
        _op(case, dropout_p=0.5)
    with pytest.raises(RuntimeError, match="at most 15 side sources"):
        _op(case, side_q=[q] * 16, side_k=[q] * 16, fusion="sum", fusion_params=[])
    # the Python wrapper's own checks
    with pytest.raises(ValueError, match="dropout_p must be in \\[0, 1\\)"):
        dif_attention(**case, dropout_p=-0.1)
    with pytest.raises(ValueError, match="fusion must be one of"):
        dif_attention(**{**case, "fusion": "mean"})
    with pytest.raises(ValueError, match="side_q\\[0\\] must be \\[B, H, n, d\\]"):
        dif_attention(**{**case, "side_q": [torch.zeros(5, 7, 3)]})
    with pytest.raises(ValueError, match="side_q and side_k must have the same length"):
        dif_attention(**{**case, "side_k": []})
    with pytest.raises(ValueError, match="gate needs W1"):
        dif_attention(**{**case, "fusion_params": case["fusion_params"][::-1]}, backend="reference")
    with pytest.raises(ValueError, match="fusion must be one of"):
        init_fusion_params("mean", 7, 2)


# ---------------------------------------------------------------- SASRec's attention
def test_scaled_dot_attention_routes_through_the_op():
    """The models' single attention function runs dif_attention on backend "seqrec" (its
    dropout mask is the op's hash of a seed from torch's generator) and the plain math
    on "reference"; without dropout both agree."""
    from seqrec.models.layers import scaled_dot_attention

    case = make_case(fusion="sum", padding="left", dtype=torch.float32, layout="heads")
    q, k, v, kpm = case["q"], case["k"], case["v"], case["key_padding_mask"]
    kw = dict(causal=True, key_padding_mask=kpm, dropout_p=0.3, training=True)
    torch.manual_seed(3)
    a = scaled_dot_attention(q, k, v, backend="seqrec", **kw)
    torch.manual_seed(3)
    b = dif_attention(q, k, v, causal=True, key_padding_mask=kpm, dropout_p=0.3, training=True)
    assert torch.equal(a, b)
    kw.update(dropout_p=0.0)
    torch.testing.assert_close(scaled_dot_attention(q, k, v, backend="seqrec", **kw),
                               scaled_dot_attention(q, k, v, backend="reference", **kw))
    # float16: the op computes in float32 and casts back
    h = scaled_dot_attention(q.detach().half(), k.detach().half(), v.detach().half(), backend="seqrec", **kw)
    assert h.dtype == torch.float16 and torch.isfinite(h).all()
    # with dropout, both backends draw the same hashed mask (the reference used to run F.dropout)
    kw.update(dropout_p=0.3)
    torch.manual_seed(5)
    a = scaled_dot_attention(q, k, v, backend="seqrec", **kw)
    torch.manual_seed(5)
    torch.testing.assert_close(a, scaled_dot_attention(q, k, v, backend="reference", **kw))


@pytest.mark.parametrize("fusion", ["sum", "gate"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype, fusion):
    """bf16 / fp16 inputs (autocast) are accepted; against the float64 reference of the
    same (rounded) inputs, the op's error is at most ~2x that of the plain-PyTorch
    reference run in the half dtype itself (STYLE.md's tolerance rule), for the output
    and the gradients."""
    case = make_case(fusion=fusion, side_dims=(3,), padding="left", dtype=torch.float32, layout="heads")
    names = ["q", "k", "v"]
    half = {n: case[n].detach().to(dtype).requires_grad_() for n in names}
    exact = {n: half[n].detach().double().requires_grad_() for n in names}
    params = [p.detach() for p in case["fusion_params"]]
    kw = dict(fusion=fusion, key_padding_mask=case["key_padding_mask"], causal=True)

    def run(inputs, fp, backend):
        as_input = [t.detach().to(dtype).to(inputs["q"].dtype) for t in (*case["side_q"], *case["side_k"])]
        out = dif_attention(inputs["q"], inputs["k"], inputs["v"], side_q=as_input[:1], side_k=as_input[1:],
                            fusion_params=fp, backend=backend, **kw)
        grad_out = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape).to(out.dtype)
        return out, torch.autograd.grad(out, [inputs[n] for n in names], grad_out)

    want, want_grads = run(exact, [p.to(dtype).double() for p in params], "reference")
    got, got_grads = run(half, [p.to(dtype) for p in params], "seqrec")
    eager, eager_grads = run(half, [p.to(dtype) for p in params], "reference")
    assert got.dtype == dtype and all(g.dtype == dtype for g in got_grads)

    def err(a, b):
        return (a.double() - b).abs().max().item()

    assert err(got, want) <= 2 * err(eager, want) + 1e-6
    for g, e, w in zip(got_grads, eager_grads, want_grads):
        assert err(g, w) <= 2 * err(e, w) + 1e-6


def test_matches_reference_through_at_mm():
    """The kernel's products go straight to torch's BLAS (sgemm_/dgemm_) when it exports
    one, else through at::mm; SEQREC_DIRECT_BLAS=0 forces the latter (read once per
    process), so the reference comparisons run again in a subprocess that way."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, SEQREC_DIRECT_BLAS="0", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "test_matches_reference and (gate or concat) and left", "-x"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
