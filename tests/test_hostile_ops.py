"""Hostile inputs to the operators: one table, one row per case, meant to grow.

Every row is a case a user hit (issue 23) or could hit: ``call`` either raises
``raises`` with a message containing ``match`` (a regular expression), or, for
``raises=None``, returns and ``check`` asserts on the result. A new finding becomes a
new row. Devices are probed with ``meta``: one meta tensor among CPU ones used to send
the whole call to the fake kernel, which returned uninitialised CPU memory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from seqrec.ops import dif_attention, dropout, intent_cluster, rank_topk, seq_mask

OPS = torch.ops.seqrec
BACKENDS = ("seqrec", "reference")


class _CpuKernels:
    """``torch.ops.seqrec`` straight to the compiled CPU kernels (past the dispatcher's
    device choice), so the C++ device check is exercised too."""

    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)

    def __getattr__(self, name):
        overload = getattr(OPS, name).default
        return lambda *args, **kwargs: overload.redispatch(self.keys, *args, **kwargs)


CPU_KERNELS = _CpuKernels()


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[], Any]
    raises: type[BaseException] | None
    match: str = ""
    check: Callable[[Any], None] | None = None


# ---------------------------------------------------------------------------------------
# Valid CPU arguments of every op, by schema name; the device rows move one to meta.

def _rank_topk_args():
    return dict(scores=torch.randn(3, 8), history_indptr=torch.tensor([0, 2, 4, 6]),
                history_items=torch.tensor([1, 2, 3, 4, 5, 6]), target=torch.tensor([1, 2, 3]))


def _dif_args(fusion="gate", dropout_p=0.25):
    g = torch.Generator().manual_seed(0)
    B, H, n, d = 2, 2, 5, 4
    t = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    from seqrec.ops import init_fusion_params
    return dict(q=t(B, H, n, d), k=t(B, H, n, d), v=t(B, H, n, d), side_q=[t(B, H, n, 3)],
                side_k=[t(B, H, n, 3)], fusion_params=init_fusion_params(fusion, n, 2, generator=g),
                key_padding_mask=torch.tensor([[False, True, True, True, True]] * B),
                seed=torch.tensor([7]), opts=dict(fusion=fusion, causal=True, scale=None,
                                                  fusion_sees_masked=False, dropout_p=dropout_p))


def _dif_op(a, ns=OPS):
    return ns.dif_attention(a["q"], a["k"], a["v"], a["side_q"], a["side_k"], a["fusion_params"],
                             a["key_padding_mask"], a["seed"], **a["opts"])


def _dif_backward_op(a, ns=OPS):
    out, lse = _dif_op(_dif_args())
    a = {**dict(grad_out=torch.ones_like(out), out=out, lse=lse), **a}
    o = a["opts"]
    return ns.dif_attention_backward(a["grad_out"], a["q"], a["k"], a["v"], a["side_q"], a["side_k"],
                                      a["fusion_params"], a["key_padding_mask"], a["seed"], a["out"],
                                      a["lse"], o["fusion"], o["causal"], o["scale"],
                                      o["fusion_sees_masked"], o["dropout_p"])


def _dif_wrapper(a, backend):
    return dif_attention(a["q"], a["k"], a["v"], a["side_q"], a["side_k"], fusion=a["opts"]["fusion"],
                         fusion_params=a["fusion_params"], key_padding_mask=a["key_padding_mask"],
                         dropout_p=0.25, training=True, seed=a["seed"], backend=backend)


def _ic_args():
    g = torch.Generator().manual_seed(1)
    B, n, D, L, K = 2, 4, 6, 5, 3
    return dict(x=torch.randn(B, n, D, generator=g), mask=torch.tensor([[False, True, True, True]] * B),
                prototypes=torch.randn(L, D, generator=g), active=torch.tensor([[0, 2, 4], [1, 3, 0]]),
                active_scale=torch.rand(B, K, generator=g) + 0.5, weights=torch.rand(B, K, n, generator=g),
                values=torch.randn(B, n, 7, generator=g))


def _ic_op(a, ns=OPS):
    return ns.intent_cluster(a["x"], a["mask"], a["prototypes"], 0.5, a["active"], a["active_scale"],
                              a["weights"], a["values"], 1e-5)


def _ic_backward_op(a, ns=OPS):
    intents, probs = _ic_op(_ic_args())
    a = {**dict(grad_intents=torch.ones_like(intents), grad_probs=torch.ones_like(probs), probs=probs), **a}
    return ns.intent_cluster_backward(a["grad_intents"], a["grad_probs"], a["x"], a["mask"], a["prototypes"],
                                       a["probs"], 0.5, a["active"], a["active_scale"], a["weights"],
                                       a["values"], 1e-5, [True] * 5)


def _ic_wrapper(a, backend):
    return intent_cluster(a["x"], a["mask"], a["prototypes"], 0.5, active=a["active"],
                          active_scale=a["active_scale"], weights=a["weights"], values=a["values"],
                          backend=backend)


def _sm_args():
    return dict(item_seq=torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]),
                item_attributes=torch.arange(2 * 9).reshape(9, 2) % 5)


def _sm_op(a, ns=OPS):
    return ns.seq_mask(a["item_seq"], a["item_attributes"], num_items=8, mask_token=9, mask_prob=0.5, seed=3)


def _sm_wrapper(a, backend):
    return seq_mask(a["item_seq"], item_attributes=a["item_attributes"], num_items=8, mask_token=9,
                    mask_prob=0.5, seed=3, backend=backend)


def _on_meta(args: dict, name: str, index: int | None) -> dict:
    a = dict(args)
    if index is None:
        a[name] = a[name].to("meta")
    else:
        a[name] = [t.to("meta") if i == index else t for i, t in enumerate(a[name])]
    return a


def _first_name(args: dict, schema_order: list[str]) -> str:
    for n in schema_order:
        v = args.get(n)
        if isinstance(v, torch.Tensor):
            return n
        if isinstance(v, list) and v:
            return f"{n}[0]"
    raise AssertionError


def _device_rows() -> list[Case]:
    """One row per (op or wrapper and backend, tensor argument): that argument on meta."""
    specs = [
        # (label, args factory, callers, tensor arguments in schema order, list arguments)
        ("rank_topk", _rank_topk_args,
         {"op": lambda a: OPS.rank_topk(a["scores"], a["history_indptr"], a["history_items"], a["target"], 3, True),
          "cpu_kernel": lambda a: CPU_KERNELS.rank_topk(a["scores"], a["history_indptr"], a["history_items"],
                                                         a["target"], 3, True),
          **{b: (lambda b: lambda a: rank_topk(a["scores"], a["history_indptr"], a["history_items"], a["target"],
                                               3, backend=b))(b) for b in BACKENDS}},
         ["scores", "history_indptr", "history_items", "target"], []),
        ("dif_attention", _dif_args,
         {"op": _dif_op, "backward_op": _dif_backward_op, "cpu_kernel": lambda a: _dif_op(a, CPU_KERNELS),
          "cpu_kernel_backward": lambda a: _dif_backward_op(a, CPU_KERNELS),
          **{b: (lambda b: lambda a: _dif_wrapper(a, b))(b) for b in BACKENDS}},
         ["q", "k", "v", "side_q", "side_k", "fusion_params", "key_padding_mask"], ["side_q", "side_k", "fusion_params"]),
        ("intent_cluster", _ic_args,
         {"op": _ic_op, "backward_op": _ic_backward_op, "cpu_kernel": lambda a: _ic_op(a, CPU_KERNELS),
          "cpu_kernel_backward": lambda a: _ic_backward_op(a, CPU_KERNELS),
          **{b: (lambda b: lambda a: _ic_wrapper(a, b))(b) for b in BACKENDS}},
         ["x", "mask", "prototypes", "active", "active_scale", "weights", "values"], []),
        ("seq_mask", _sm_args,
         {"op": _sm_op, "cpu_kernel": lambda a: _sm_op(a, CPU_KERNELS), **{b: (lambda b: lambda a: _sm_wrapper(a, b))(b) for b in BACKENDS}},
         ["item_seq", "item_attributes"], []),
    ]
    rows = []
    for label, make, callers, names, lists in specs:
        base = make()
        for caller, fn in callers.items():
            for name in names:
                indices = range(len(base[name])) if name in lists else [None]
                for i in indices:
                    shown = name if i is None else f"{name}[{i}]"
                    moved = _on_meta(base, name, i)
                    first = _first_name(base, names)
                    if caller.endswith("backward_op") or caller == "cpu_kernel_backward":
                        # the incoming gradient comes first in the schema
                        pattern = rf"argument '{re.escape(shown)}' is on meta while '\w+' is on cpu"
                    elif shown == first:  # the first argument fixes the device: the next one is named
                        rest = [n for n in names if n != name]
                        other = _first_name(base, rest)
                        pattern = rf"'{re.escape(other)}' is on cpu while '{re.escape(shown)}' is on meta"
                    else:
                        pattern = rf"argument '{re.escape(shown)}' is on meta while '{re.escape(first)}' is on cpu"
                    rows.append(Case(f"device-{label}-{caller}-{shown}-meta",
                                     (lambda fn, moved: lambda: fn(moved))(fn, moved),
                                     RuntimeError, rf"expected all tensors to be on the same device.*{pattern}"))
    # Backward-only arguments.
    for label, fn, extra in [("dif_attention_backward", _dif_backward_op, ["grad_out", "out", "lse"]),
                             ("intent_cluster_backward", _ic_backward_op, ["grad_intents", "grad_probs", "probs"])]:
        base = _dif_args() if label.startswith("dif") else _ic_args()
        out = _dif_op(base) if label.startswith("dif") else _ic_op(base)
        full = dict(base, **({"grad_out": torch.ones_like(out[0]), "out": out[0], "lse": out[1]}
                             if label.startswith("dif") else
                             {"grad_intents": torch.ones_like(out[0]), "grad_probs": torch.ones_like(out[1]),
                              "probs": out[1]}))
        for name in extra:
            moved = dict(full, **{name: full[name].to("meta")})
            pattern = (rf"'\w+' is on cpu while '{name}' is on meta" if name in ("grad_out", "grad_intents")
                       else rf"argument '{name}' is on meta while '\w+' is on cpu")
            rows.append(Case(f"device-{label}-{name}-meta", (lambda fn, moved: lambda: fn(moved))(fn, moved),
                             RuntimeError, pattern))
    return rows


def _seed_rows() -> list[Case]:
    x = torch.randn(4, 5)
    a = _dif_args(fusion="sum")
    seq = torch.tensor([[0, 1, 2, 3]])
    dif = lambda seed, backend="seqrec": dif_attention(a["q"], a["k"], a["v"], dropout_p=0.5,  # noqa: E731
                                                       training=True, seed=seed, backend=backend)
    sm = lambda seed, backend="seqrec": seq_mask(seq, num_items=8, mask_token=9, seed=seed,  # noqa: E731
                                                 backend=backend)
    rows = [
        Case("seed-dropout-op-meta", lambda: OPS.dropout(x, torch.tensor([1], device="meta"), 0.5),
             RuntimeError, r"dropout: argument 'seed' must be a CPU tensor"),
        Case("seed-dif_attention-op-meta", lambda: OPS.dif_attention(
            a["q"], a["k"], a["v"], [], [], [], None, torch.tensor([1], device="meta"), dropout_p=0.5),
             RuntimeError, r"dif_attention: argument 'seed' must be a CPU tensor"),
        Case("seed-dropout-cpu_kernel-meta", lambda: CPU_KERNELS.dropout(x, torch.tensor([1], device="meta"), 0.5),
             RuntimeError, r"dropout: argument 'seed' must be a CPU tensor"),
        Case("seed-dif_attention-cpu_kernel-meta", lambda: CPU_KERNELS.dif_attention(
            a["q"], a["k"], a["v"], [], [], [], None, torch.tensor([1], device="meta"), dropout_p=0.5),
             RuntimeError, r"dif_attention: argument 'seed' must be a CPU tensor"),
    ]
    for backend in BACKENDS:
        rows += [
            Case(f"seed-dropout-{backend}-meta-tensor",
                 lambda b=backend: dropout(x, 0.5, seed=torch.tensor([1], device="meta"), backend=b),
                 RuntimeError, r"dropout: argument 'seed' is on meta, which holds no value"),
            Case(f"seed-dif_attention-{backend}-meta-tensor",
                 lambda b=backend: dif(torch.tensor([1], device="meta"), b),
                 RuntimeError, r"dif_attention: argument 'seed' is on meta, which holds no value"),
        ]
        # The seed contract: an int in [-2**63, 2**64), its 64 bits.
        for name, call in [("dropout", lambda s, b=backend: dropout(x, 0.5, seed=s, backend=b)),
                           ("dif_attention", lambda s, b=backend: dif(s, b)),
                           ("seq_mask", lambda s, b=backend: sm(s, b))]:
            rows += [
                Case(f"seed-{name}-{backend}-2**64", lambda c=call: c(2 ** 64), ValueError,
                     rf"{name}: argument 'seed' must lie in \[-2\*\*63, 2\*\*64\), got {2 ** 64}"),
                Case(f"seed-{name}-{backend}-below-int64", lambda c=call: c(-(2 ** 63) - 1), ValueError,
                     rf"{name}: argument 'seed' must lie in \[-2\*\*63, 2\*\*64\)"),
                Case(f"seed-{name}-{backend}-float", lambda c=call: c(1.5), TypeError,
                     rf"{name}: argument 'seed' must be an int, got float"),
                Case(f"seed-{name}-{backend}-bool", lambda c=call: c(True), TypeError,
                     rf"{name}: argument 'seed' must be an int, got bool"),
                # 2**63 and above are accepted (no "Overflow when unpacking long long") and
                # fold onto the same 64 bits as s - 2**64.
                Case(f"seed-{name}-{backend}-2**63-folds", lambda c=call: (c(2 ** 63 + 5), c(-(2 ** 63) + 5)),
                     None, check=_same_outputs),
                Case(f"seed-{name}-{backend}-2**64-1-folds", lambda c=call: (c(2 ** 64 - 1), c(-1)),
                     None, check=_same_outputs),
            ]
    return rows


def _same_outputs(pair) -> None:
    a, b = pair
    a = list(a) if isinstance(a, tuple) else [a]
    b = list(b) if isinstance(b, tuple) else [b]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _rank_topk_k_rows() -> list[Case]:
    a = _rank_topk_args()
    full = lambda b: rank_topk(a["scores"], a["history_indptr"], a["history_items"], a["target"], 7,  # noqa: E731
                               backend=b)

    def capped(b):
        def check(result):
            top, rank = result
            want_top, want_rank = full(b)
            assert top.shape == (3, 7)  # k capped at the I - 1 = 7 candidate items, nothing more allocated
            assert torch.equal(top, want_top) and torch.equal(rank, want_rank)
        return check

    rows = [Case("rank_topk-op-k-1e9-capped",
                 lambda: OPS.rank_topk(a["scores"], a["history_indptr"], a["history_items"], a["target"], 10 ** 9,
                                       True), None, check=capped("seqrec"))]
    for b in BACKENDS:
        rows += [
            Case(f"rank_topk-{b}-k-1e9-capped", lambda b=b: rank_topk(
                a["scores"], a["history_indptr"], a["history_items"], a["target"], 10 ** 9, backend=b),
                 None, check=capped(b)),
            Case(f"rank_topk-{b}-k-negative", lambda b=b: rank_topk(
                a["scores"], a["history_indptr"], a["history_items"], a["target"], -1, backend=b),
                 RuntimeError, r"rank_topk: argument 'k' must be >= 0, got -1"),
        ]
    # Bad ids fail alike on both backends (the fuzz test found the reference answering
    # with an IndexError, or not at all when exclude_history=False).
    for b in BACKENDS:
        for exclude in (True, False):
            rows.append(Case(f"rank_topk-{b}-history-id-out-of-range-exclude={exclude}", lambda b=b, e=exclude: rank_topk(
                a["scores"], a["history_indptr"], torch.tensor([1, 2, 3, 4, 5, 8]), a["target"], 3, e, backend=b),
                RuntimeError, r"rank_topk: argument 'history_items' must hold item ids in \[0, 8\)"))
        rows.append(Case(f"rank_topk-{b}-target-padding", lambda b=b: rank_topk(
            a["scores"], a["history_indptr"], a["history_items"], torch.tensor([1, 0, 3]), 3, backend=b),
            RuntimeError, r"rank_topk: argument 'target' must hold item ids in \[1, 8\)"))
        rows.append(Case(f"rank_topk-{b}-indptr-decreasing", lambda b=b: rank_topk(
            a["scores"], torch.tensor([0, 4, 2, 6]), a["history_items"], a["target"], 3, backend=b),
            RuntimeError, r"rank_topk: argument 'history_indptr' must .*non-decreasing"))
    rows.append(Case("rank_topk-fake-k-1e9-capped", lambda: OPS.rank_topk(
        a["scores"].to("meta"), a["history_indptr"].to("meta"), a["history_items"].to("meta"),
        a["target"].to("meta"), 10 ** 9, True), None, check=lambda r: _shape_is(r[0], (3, 7))))
    return rows


def _shape_is(t, shape):
    assert tuple(t.shape) == shape


def _second_derivative_rows() -> list[Case]:
    """Second derivatives through ops whose backward is not differentiable raise."""
    def dif_fn(q, k, v):
        return dif_attention(q, k, v, key_padding_mask=torch.tensor([[False, True, True]]))

    def ic_fn(x, prototypes):
        return intent_cluster(x, torch.tensor([[False, True, True]]), prototypes, 0.7)[0]

    g = torch.Generator().manual_seed(2)
    qkv = [torch.randn(1, 1, 3, 2, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3)]
    ic = [torch.randn(1, 3, 4, dtype=torch.float64, generator=g, requires_grad=True),
          torch.randn(2, 4, dtype=torch.float64, generator=g, requires_grad=True)]

    def grad_of_grad(fn, inputs):
        out = fn(*inputs)
        (g0,) = torch.autograd.grad(out.square().sum(), inputs[:1], create_graph=True)
        return torch.autograd.grad(g0.sum(), inputs)

    twice = "{}: second derivatives are not implemented \\(its backward is once differentiable\\)"
    return [
        Case("gradgradcheck-dif_attention", lambda: torch.autograd.gradgradcheck(dif_fn, qkv), RuntimeError,
             twice.format("dif_attention")),
        Case("gradgradcheck-intent_cluster", lambda: torch.autograd.gradgradcheck(ic_fn, ic), RuntimeError,
             twice.format("intent_cluster")),
        Case("double-backward-dif_attention", lambda: grad_of_grad(dif_fn, qkv), RuntimeError,
             twice.format("dif_attention")),
        Case("double-backward-intent_cluster", lambda: grad_of_grad(ic_fn, ic), RuntimeError,
             twice.format("intent_cluster")),
    ]


CASES = _device_rows() + _seed_rows() + _rank_topk_k_rows() + _second_derivative_rows()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case):
    if case.raises is None:
        case.check(case.call())
        return
    with pytest.raises(case.raises, match=case.match):
        case.call()


def test_table_ids_unique_and_cover_the_issue_reproducers():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    # issue 23's reproducers, by name
    for needed in ["device-rank_topk-op-target-meta", "device-dif_attention-op-k-meta",
                   "device-intent_cluster-op-prototypes-meta", "device-seq_mask-op-item_attributes-meta",
                   "seed-dropout-op-meta", "rank_topk-op-k-1e9-capped", "gradgradcheck-dif_attention",
                   "gradgradcheck-intent_cluster", "seed-dropout-seqrec-2**64"]:
        assert needed in ids, needed


def test_first_derivatives_still_work_with_once_differentiable():
    # The once-differentiable backward must not disturb plain (and create_graph-free) gradients.
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 3, 2, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: dif_attention(q, k, v), (q, k, v))
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    p = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    assert torch.autograd.gradcheck(lambda x, p: intent_cluster(x, mask, p, 0.5), (x, p))

