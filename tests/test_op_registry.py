"""The dispatch policy, read from torch's dispatcher tables (issue 28 item 4).

Every ``seqrec::`` schema has a CPU kernel, a CUDA kernel (compiled, or the op's
reference registered in its place, ``seqrec.ops._registry``), a fake kernel, and an
autograd formula where it is differentiable; its fake kernel has the schema's
signature and its Python wrapper takes the schema's arguments under the same names
and defaults. Without a GPU the CUDA registration is exercised through the dispatcher
itself: ``OpOverload.redispatch`` with the CUDA key runs the registered CUDA kernel on
CPU tensors, which must equal the CPU kernel.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from seqrec import ops
from seqrec.ops import dif_attention, dropout, intent_cluster, rank_topk, seq_mask
from seqrec.ops import rank_topk as rank_topk_module  # noqa: F401  (registrations)
from seqrec.ops._registry import REFERENCE_ON_CUDA

ALL_OPS = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("seqrec::"))

# Differentiable forward ops; their backward ops are once-differentiable (a second
# derivative raises, tests/test_hostile_ops.py), the rest return integers.
DIFFERENTIABLE = {"dif_attention", "intent_cluster", "dropout"}
BACKWARD_OPS = {"dif_attention_backward", "intent_cluster_backward"}
NON_DIFFERENTIABLE = {"rank_topk", "rank_sampled", "seq_mask"}
WRAPPERS = {"dif_attention": dif_attention, "intent_cluster": intent_cluster, "dropout": dropout,
            "rank_topk": rank_topk, "rank_sampled": ops.rank_sampled, "seq_mask": seq_mask}


def _schema(name):
    return getattr(torch.ops.seqrec, name).default._schema


def _has(name, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"seqrec::{name}", key)


def test_every_op_is_classified():
    assert set(ALL_OPS) == DIFFERENTIABLE | BACKWARD_OPS | NON_DIFFERENTIABLE, (
        "a new seqrec:: op: add it to the sets above (and give it every registration)")


@pytest.mark.parametrize("name", ALL_OPS)
def test_cpu_cuda_and_fake_kernels(name):
    assert _has(name, "CPU"), f"{name}: no CPU kernel"
    assert _has(name, "CUDA"), f"{name}: no CUDA kernel (compiled or the registered reference)"
    assert _has(name, "Meta"), f"{name}: no fake (meta) kernel"
    dump = torch._C._dispatch_dump(f"seqrec::{name}")
    cuda_lines = [line for line in dump.splitlines() if line.startswith("CUDA")]
    assert len(cuda_lines) == 1, dump
    # The CUDA kernel is the compiled one exactly when the registry did not put the
    # reference there: REFERENCE_ON_CUDA never lies to SEQREC_REQUIRE_CUDA.
    compiled = "bindings.cpp" in cuda_lines[0]
    assert compiled == (name not in REFERENCE_ON_CUDA), cuda_lines[0]


def test_no_compiled_cuda_kernel_yet_so_every_op_runs_the_reference_on_cuda():
    # Until bindings.cpp's CUDA block registers real kernels. When one lands, its op
    # leaves REFERENCE_ON_CUDA by itself; update this test then.
    assert REFERENCE_ON_CUDA == set(ALL_OPS)


@pytest.mark.parametrize("name", ALL_OPS)
def test_autograd_registration(name):
    has_autograd = _has(name, "Autograd")  # the alias key: every device
    assert has_autograd == (name in DIFFERENTIABLE), name


def _fake_kernel(name):
    """The registered fake of ``name``: by convention ``_<name>_fake`` in the op's module,
    checked against the source location torch recorded when it was registered."""
    import importlib

    entry = torch._library.simple_registry.singleton.find(f"seqrec::{name}")
    assert entry.fake_impl.kernel is not None, f"{name}: no register_fake"
    module_name = "rank_topk" if name == "rank_sampled" else name.removesuffix("_backward")
    module = importlib.import_module(f"seqrec.ops.{module_name}")
    fn = getattr(module, f"_{name}_fake")
    lines, start = inspect.getsourcelines(fn)
    path, line = entry.fake_impl.kernel.source.rsplit(":", 1)
    assert path == inspect.getsourcefile(fn) and start <= int(line) < start + len(lines), (
        name, entry.fake_impl.kernel.source)
    return fn


@pytest.mark.parametrize("name", ALL_OPS)
def test_fake_signature_matches_schema(name):
    params = list(inspect.signature(_fake_kernel(name)).parameters.values())
    args = _schema(name).arguments
    assert [p.name for p in params] == [a.name for a in args]
    for p, a in zip(params, args):
        assert (p.kind == p.KEYWORD_ONLY) == a.kwarg_only, (name, a.name)
        if a.has_default_value():
            got = list(p.default) if isinstance(p.default, tuple) else p.default  # () for Tensor[] = []
            assert p.default is not p.empty and got == a.default_value, (name, a.name, p.default)
        else:
            assert p.default is p.empty, (name, a.name)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_takes_the_schema_arguments(name):
    params = inspect.signature(WRAPPERS[name]).parameters
    for a in _schema(name).arguments:
        assert a.name in params, f"{name}: the wrapper has no argument {a.name!r} of the schema"
        p = params[a.name]
        if a.has_default_value() and p.default is not p.empty:
            want = a.default_value
            got = p.default
            if want is None and str(a.type) == "Optional[List[Tensor]]" and got == ():
                got = None  # Tensor[]? = None means [], the wrapper's ()
            assert got == want, (name, a.name, got, want)
    # Wrappers exist for the user-facing ops only; backward ops are internal.
    assert set(WRAPPERS) == set(ALL_OPS) - BACKWARD_OPS


# ---------------------------------------------------------------------------------------
# The CUDA kernels, run through the dispatcher on CPU tensors.

CUDA_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def _cuda(name, *args, **kwargs):
    return getattr(torch.ops.seqrec, name).default.redispatch(CUDA_KEYS, *args, **kwargs)


def _cpu(name, *args, **kwargs):
    return getattr(torch.ops.seqrec, name).default(*args, **kwargs)


def _assert_same(a, b, **tol):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y, **tol)
    else:
        torch.testing.assert_close(a, b, **tol)


def _samples():
    g = torch.Generator().manual_seed(0)
    B, H, n, d = 2, 2, 5, 3
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    fp = ops.init_fusion_params("gate", n, 2, dtype=torch.float64, generator=g)
    kpm = torch.tensor([[False, True, True, True, True], [True] * 5])
    dif = (t(B, H, n, d), t(B, H, n, d), t(B, H, n, d), [t(B, H, n, 2)], [t(B, H, n, 2)], fp, kpm,
           torch.tensor([11]))
    dif_kw = dict(fusion="gate", causal=True, scale=None, fusion_sees_masked=False, dropout_p=0.3)
    x = t(2, 4, 6)
    mask = torch.tensor([[False, True, True, True], [False] * 4])
    ic = (x, mask, t(5, 6), 0.5, torch.tensor([[0, 3], [4, 1]]), t(2, 2).abs() + 0.5, t(2, 2, 4).abs(), t(2, 4, 3),
          1e-5)
    return dif, dif_kw, ic


def test_cuda_kernels_equal_cpu_kernels_through_the_dispatcher():
    dif, dif_kw, ic = _samples()
    tol = dict(atol=1e-10, rtol=1e-8)
    # dif_attention and its backward (dropout on: the same hashed mask on both).
    out_cpu = _cpu("dif_attention", *dif, **dif_kw)
    out_cuda = _cuda("dif_attention", *dif, **dif_kw)
    _assert_same(out_cuda, out_cpu, **tol)
    grad_out = torch.randn_like(out_cpu[0])
    bwd_args = (grad_out, *dif, *out_cpu, *dif_kw.values())
    _assert_same(_cuda("dif_attention_backward", *bwd_args), _cpu("dif_attention_backward", *bwd_args), **tol)
    # intent_cluster and its backward.
    ic_cpu = _cpu("intent_cluster", *ic)
    _assert_same(_cuda("intent_cluster", *ic), ic_cpu, **tol)
    gi, gp = torch.randn_like(ic_cpu[0]), torch.randn_like(ic_cpu[1])
    x, mask, protos, tau, active, scale, w, v, eps = ic
    for output_mask in ([True] * 5, [True, False, False, True, False]):
        args = (gi, gp, x, mask, protos, ic_cpu[1], tau, active, scale, w, v, eps, output_mask)
        _assert_same(_cuda("intent_cluster_backward", *args), _cpu("intent_cluster_backward", *args), **tol)
    # dropout, rank_topk, rank_sampled, seq_mask.
    xd = torch.randn(3, 7, dtype=torch.float64)
    _assert_same(_cuda("dropout", xd, torch.tensor([5]), 0.4), _cpu("dropout", xd, torch.tensor([5]), 0.4))
    scores = torch.randn(3, 9)
    rt = (scores, torch.tensor([0, 2, 2, 3]), torch.tensor([1, 4, 2]), torch.tensor([3, 5, 8]), 4, True)
    _assert_same(_cuda("rank_topk", *rt), _cpu("rank_topk", *rt))
    _assert_same(_cuda("rank_sampled", scores), _cpu("rank_sampled", scores))
    seq = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    attrs = torch.arange(20).reshape(10, 2)
    sm_kw = dict(num_items=9, mask_token=10, mask_prob=0.4, seed=-3)
    _assert_same(_cuda("seq_mask", seq, attrs, **sm_kw), _cpu("seq_mask", seq, attrs, **sm_kw))


def test_cuda_kernel_device_check():
    # A CPU tensor among (what the CUDA kernel takes for) CUDA ones: named, not garbage.
    dif, dif_kw, _ = _samples()
    bad = (dif[0], dif[1].to("meta"), *dif[2:])
    with pytest.raises(RuntimeError, match="argument 'k' is on meta while 'q' is on cpu"):
        _cuda("dif_attention", *bad, **dif_kw)


def test_wrappers_no_longer_ask_for_kernels():
    # One policy, in the dispatcher: no wrapper or model probes the dispatcher itself.
    import seqrec.models.layers as layers
    import seqrec.ops.backend as backend

    assert not hasattr(backend, "has_kernel")
    assert "_dispatch_has_kernel" not in inspect.getsource(layers)
    for name in WRAPPERS:
        module = inspect.getmodule(WRAPPERS[name])
        assert "_dispatch_has_kernel" not in inspect.getsource(module), name


def test_require_cuda_means_compiled_kernels():
    # tests/conftest.py refuses SEQREC_REQUIRE_CUDA=1 while any op runs the reference on
    # CUDA; here: the reason it gives names them.
    from conftest import require_cuda_problem

    # A CUDA build whose CUDA block registers nothing does not qualify either.
    problem = require_cuda_problem(has_cuda=True, cuda_built=True)
    assert problem.startswith("SEQREC_REQUIRE_CUDA=1 but these ops have no compiled CUDA kernel")
    for name in sorted(REFERENCE_ON_CUDA):
        assert name in problem
    assert "built without CUDA kernels" in require_cuda_problem(has_cuda=True, cuda_built=False)
    assert require_cuda_problem(has_cuda=False, cuda_built=True) == (
        "SEQREC_REQUIRE_CUDA=1 but no CUDA device is available")
