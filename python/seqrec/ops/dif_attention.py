"""``dif_attention``: DIF-SR's decoupled side-information attention (``torch.ops.seqrec``).

Two registered ops, ``seqrec::dif_attention`` (forward, returns ``out`` and the per-row
log-sum-exp ``lse``) and ``seqrec::dif_attention_backward``; this module gives them a fake
kernel (for ``torch.compile``), the autograd formula (which calls the backward op and
saves only the inputs, ``out`` and ``lse``), and the typed wrapper :func:`dif_attention`.
The contract is written out in ``csrc/ops/dif_attention/dif_attention.h``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

import seqrec._loader  # noqa: F401  (registers torch.ops.seqrec.*)

from . import reference
from ._autograd import once_differentiable, register_loop_vmap
from ._checks import check_host_tensor, check_same_device
from ._random import seed_tensor
from ._registry import register_cuda_reference
from .backend import get_backend
from .reference.dif_attention import FUSIONS, dif_attention_with_lse

__all__ = ["dif_attention", "init_fusion_params", "fusion_param_shapes", "FUSIONS"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)  # accepted by the wrapper, computed in float32


def fusion_param_shapes(fusion: str, n: int, num_sources: int, hidden: int | None = None) -> list[tuple[int, ...]]:
    """Shapes of the ``fusion_params`` that ``fusion`` takes.

    Args:
        fusion: ``"sum"`` (no parameters), ``"concat"`` or ``"gate"``.
        n: number of keys ``nk`` (the sequence length; the fusion maps act on score rows).
        num_sources: S = 1 (item) + number of side sources (position, attributes...).
        hidden: gate only, the width ``a`` of the gate's hidden layer (default ``n``, as
            DIF-SR's ``VanillaAttention(max_len, max_len)``).

    Returns:
        ``[]`` for sum; ``[(n, S*n), (n,)]`` for concat (``nn.Linear(S*n, n)``: W, b);
        ``[(a, n), (a,), (1, a), (1,)]`` for gate (``nn.Linear(n, a)`` then
        ``nn.Linear(a, 1)``: W1, b1, w2, b2).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if n < 1 or num_sources < 1:
        raise ValueError(f"need n >= 1 and num_sources >= 1, got n={n}, num_sources={num_sources}")
    if fusion == "sum":
        return []
    if fusion == "concat":
        return [(n, num_sources * n), (n,)]
    a = n if hidden is None else int(hidden)
    if a < 1:
        raise ValueError(f"gate hidden width must be >= 1, got {a}")
    return [(a, n), (a,), (1, a), (1,)]


def init_fusion_params(fusion: str, n: int, num_sources: int, *, hidden: int | None = None,
                       dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> list[Tensor]:
    """Freshly initialised fusion parameters (plain tensors; wrap them in ``nn.Parameter``).

    Shapes as :func:`fusion_param_shapes`; values as PyTorch's ``nn.Linear`` default
    (uniform in ``+-1/sqrt(fan_in)`` for weight and bias), which is what DIF-SR's
    ``nn.Linear`` fusion layers start from. Source order in ``concat``'s W columns and
    in the gate is ours (item, then ``side_q``/``side_k`` in order); DIF-SR's code
    stacks attributes first, then item, then position, which matters only when loading
    its weights.
    """
    out = []
    shapes = fusion_param_shapes(fusion, n, num_sources, hidden)
    fan_ins = {"concat": [num_sources * n] * 2, "gate": [n, n, None, None]}.get(fusion, [])
    for i, shape in enumerate(shapes):
        fan_in = fan_ins[i] if fan_ins[i] is not None else shapes[0][0]  # gate w2/b2: fan_in = a
        bound = 1.0 / math.sqrt(fan_in)
        t = torch.empty(shape, dtype=dtype, device=device)
        t.uniform_(-bound, bound, generator=generator)
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------
# Fake kernels: shapes, dtypes and devices only (the C++ checks run on real tensors).

def _check_common(q, k, v, side_q, side_k, fusion_params, fusion, key_padding_mask, causal, op):
    # First: a call with one meta tensor among real ones lands here (see _checks.py).
    check_same_device(op, q=q, k=k, v=v, side_q=side_q, side_k=side_k, fusion_params=fusion_params,
                      key_padding_mask=key_padding_mask)
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4,
                 lambda: f"{op}: q, k, v must be 4-dimensional")
    torch._check(q.dtype in _FLOAT_DTYPES, lambda: f"{op}: argument 'q' must be float32 or float64, got {q.dtype}")
    torch._check(k.dtype == q.dtype and v.dtype == q.dtype, lambda: f"{op}: q, k, v must share a dtype")
    B, H, nq, dh = q.shape
    nk = k.shape[2]
    torch._check(k.shape[0] == B and k.shape[1] == H and k.shape[3] == dh,
                 lambda: f"{op}: argument 'k' must be [B, H, nk, dh]")
    torch._check(v.shape[0] == B and v.shape[1] == H and v.shape[2] == nk,
                 lambda: f"{op}: argument 'v' must be [B, H, nk, dv]")
    torch._check(not causal or nq == nk, lambda: f"{op}: causal attention needs as many queries as keys")
    torch._check(len(side_q) == len(side_k), lambda: f"{op}: 'side_q' and 'side_k' must have the same length")
    for sq, sk in zip(side_q, side_k):
        torch._check(sq.dim() == 4 and sk.dim() == 4 and sq.dtype == q.dtype and sk.dtype == q.dtype,
                     lambda: f"{op}: side tensors must be 4-dimensional with q's dtype")
        torch._check(tuple(sq.shape[:3]) == (B, H, nq) and tuple(sk.shape[:3]) == (B, H, nk)
                     and sq.shape[3] == sk.shape[3], lambda: f"{op}: side_q/side_k shapes disagree with q/k")
    torch._check(fusion in FUSIONS, lambda: f"{op}: argument 'fusion' must be one of {FUSIONS}")
    want = {"sum": 0, "concat": 2, "gate": 4}.get(fusion, -1)
    torch._check(len(fusion_params) == want, lambda: f"{op}: fusion {fusion!r} takes {want} fusion_params")
    for t in fusion_params:
        torch._check(t.dtype == q.dtype, lambda: f"{op}: fusion_params must have q's dtype")
    if key_padding_mask is not None:
        torch._check(key_padding_mask.dtype == torch.bool and tuple(key_padding_mask.shape) == (B, nk),
                     lambda: f"{op}: argument 'key_padding_mask' must be a bool [B, nk] tensor")
    return B, H, nq, nk, v.shape[3]


@torch.library.register_fake("seqrec::dif_attention")
def _dif_attention_fake(q, k, v, side_q=None, side_k=None, fusion_params=None, key_padding_mask=None, seed=None,
                        *, fusion="sum", causal=True, scale=None, fusion_sees_masked=False, dropout_p=0.0):
    side_q, side_k, fusion_params = list(side_q or []), list(side_k or []), list(fusion_params or [])
    check_host_tensor("dif_attention", "seed", seed)
    B, H, nq, nk, dv = _check_common(q, k, v, side_q, side_k, fusion_params, fusion, key_padding_mask,
                                     causal, "dif_attention")
    torch._check(0.0 <= dropout_p < 1.0, lambda: "dif_attention: argument 'dropout_p' must be in [0, 1)")
    out = q.new_empty((B, H, nq, dv))
    lse = q.new_empty((B, H, nq))
    return out, lse


@torch.library.register_fake("seqrec::dif_attention_backward")
def _dif_attention_backward_fake(grad_out, q, k, v, side_q, side_k, fusion_params, key_padding_mask, seed,
                                 out, lse, fusion, causal, scale, fusion_sees_masked, dropout_p):
    check_same_device("dif_attention_backward", grad_out=grad_out, q=q, out=out, lse=lse)
    check_host_tensor("dif_attention_backward", "seed", seed)
    B, H, nq, nk, dv = _check_common(q, k, v, side_q, side_k, fusion_params, fusion, key_padding_mask,
                                     causal, "dif_attention_backward")
    torch._check(tuple(grad_out.shape) == (B, H, nq, dv),
                 lambda: "dif_attention_backward: argument 'grad_out' must be [B, H, nq, dv]")
    # Gradients are empty_like their inputs (strides kept for dense inputs), as the kernel's.
    return (
        torch.empty_like(q),
        torch.empty_like(k),
        torch.empty_like(v),
        [torch.empty_like(t) for t in side_q],
        [torch.empty_like(t) for t in side_k],
        [t.new_empty(t.shape) for t in fusion_params],
    )


# ---------------------------------------------------------------------------------------
# Autograd: save the inputs, out and lse; the backward op recomputes the rest per block.

def _setup_context(ctx, inputs, keyword_only_inputs, output):
    q, k, v, side_q, side_k, fusion_params, key_padding_mask, seed = inputs
    kw = keyword_only_inputs
    fusion, causal, scale = kw["fusion"], kw["causal"], kw["scale"]
    fusion_sees_masked, dropout_p = kw["fusion_sees_masked"], kw["dropout_p"]
    out, lse = output
    ctx.mark_non_differentiable(lse)
    # Tensor[]? lists: None means [], and its gradient is then None, not [].
    ctx.lists_given = (side_q is not None, side_k is not None, fusion_params is not None)
    side_q, side_k, fusion_params = list(side_q or []), list(side_k or []), list(fusion_params or [])
    ctx.num_side = len(side_q)
    ctx.num_fusion = len(fusion_params)
    ctx.opts = (fusion, causal, scale, fusion_sees_masked, dropout_p)
    ctx.save_for_backward(q, k, v, *side_q, *side_k, *fusion_params, out, lse, key_padding_mask, seed)


def _grads(ctx, grad_out):
    saved = ctx.saved_tensors
    q, k, v = saved[:3]
    m, f = ctx.num_side, ctx.num_fusion
    side_q = list(saved[3:3 + m])
    side_k = list(saved[3 + m:3 + 2 * m])
    fusion_params = list(saved[3 + 2 * m:3 + 2 * m + f])
    out, lse, key_padding_mask, seed = saved[3 + 2 * m + f:]
    fusion, causal, scale, fusion_sees_masked, dropout_p = ctx.opts
    return torch.ops.seqrec.dif_attention_backward.default(
        grad_out, q, k, v, side_q, side_k, fusion_params, key_padding_mask, seed, out, lse, fusion, causal,
        scale, fusion_sees_masked, dropout_p)


# Once differentiable: the backward op has no derivative of its own, so a second
# derivative (create_graph=True, gradgradcheck, torch.func.hessian) raises instead of
# silently treating the backward as constant (which gave zero second derivatives).
@once_differentiable("dif_attention")
def _backward(ctx, grad_out, grad_lse):
    gq, gk, gv, gsq, gsk, gfp = _grads(ctx, grad_out)
    gsq, gsk, gfp = (g if given else None for g, given in zip((gsq, gsk, gfp), ctx.lists_given))
    # The dispatcher drops trailing arguments left at their defaults (seed,
    # key_padding_mask = None): one gradient per argument actually passed.
    return (gq, gk, gv, gsq, gsk, gfp, None, None)[:len(ctx.needs_input_grad)]


torch.library.register_autograd("seqrec::dif_attention", _backward, setup_context=_setup_context)


class _DifAttentionFunction(torch.autograd.Function):
    """The same formula as an ``autograd.Function`` in the setup_context form, which the
    wrapper calls: ``torch.func`` transforms (grad, vjp, jacrev, vmap) accept it, while
    the autograd generated by ``register_autograd`` (for direct ``torch.ops`` calls) they
    refuse. Inputs flattened: (opts, m, f, q, k, v, *side_q, *side_k, *fusion_params,
    key_padding_mask, seed)."""

    generate_vmap_rule = True  # through the ops' batching rules (register_loop_vmap)

    @staticmethod
    def forward(opts, m, f, q, k, v, *rest):
        fusion, causal, scale, fusion_sees_masked, dropout_p = opts
        return torch.ops.seqrec.dif_attention.default(
            q, k, v, list(rest[:m]), list(rest[m:2 * m]), list(rest[2 * m:2 * m + f]), rest[2 * m + f],
            rest[2 * m + f + 1], fusion=fusion, causal=causal, scale=scale,
            fusion_sees_masked=fusion_sees_masked, dropout_p=dropout_p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        opts, m, f, q, k, v, *rest = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.num_side, ctx.num_fusion, ctx.opts = m, f, opts
        ctx.save_for_backward(q, k, v, *rest[:2 * m + f], out, lse, *rest[2 * m + f:])

    @staticmethod
    @once_differentiable("dif_attention")
    def backward(ctx, grad_out, grad_lse):
        gq, gk, gv, gsq, gsk, gfp = _grads(ctx, grad_out)
        return (None, None, None, gq, gk, gv, *gsq, *gsk, *gfp, None, None)


register_loop_vmap("dif_attention")
register_loop_vmap("dif_attention_backward")


# ---------------------------------------------------------------------------------------
# The wrapper.

def _expand_side(t: Tensor, B: int, H: int, n: int, name: str) -> Tensor:
    # [H, n, d] or [1, H, n, d] (shared across the batch, e.g. position q/k) -> a stride-0
    # view [B, H, n, d]: read in place by the kernel, never copied.
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1] != H or t.shape[2] != n or t.shape[0] not in (1, B):
        raise ValueError(f"dif_attention: {name} must be [B, H, n, d], [1, H, n, d] or [H, n, d] "
                         f"with B={B}, H={H}, n={n}, got shape {tuple(t.shape)}")
    return t.expand(B, H, n, t.shape[3]) if t.shape[0] != B else t


def dif_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    side_q: Sequence[Tensor] = (),
    side_k: Sequence[Tensor] = (),
    *,
    fusion: str = "sum",
    fusion_params: Sequence[Tensor] | None = None,
    key_padding_mask: Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    fusion_sees_masked: bool = False,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> Tensor:
    """Decoupled side-information attention (DIF-SR, Xie et al. SIGIR 2022), per head.

    Sources s = 0..S-1 each give a raw score matrix ``R_s = q_s k_s^T``: source 0 is
    the item (``q``, ``k``), sources 1.. are ``side_q[s-1]``, ``side_k[s-1]`` (DIF-SR:
    position first, then each attribute; any order works, it only fixes the layout of
    the fusion parameters). The S matrices are fused row by row, scaled, masked,
    softmaxed, dropped out and applied to the item-only values ``v``::

        X_s   = R_s, with disallowed entries set to 0 (unless fusion_sees_masked)
        sum:    F[i] = sum_s X_s[i]
        concat: F[i] = W @ concat_s(X_s[i]) + b                       (nn.Linear(S*nk, nk))
        gate:   e_s = w2 @ relu(W1 @ X_s[i] + b1) + b2;  g = softmax_s(e);
                F[i] = sum_s g_s X_s[i]                               (DIF-SR's best)
        P = softmax_j(scale * F[i, j], disallowed j -> -inf);  out = dropout(P) @ v

    Args:
        q: [B, H, nq, dh] item queries. float32 or float64; float16 / bfloat16 (e.g.
            under autocast) are computed in float32 and the output cast back. Any strides.
        k: [B, H, nk, dh] item keys.
        v: [B, H, nk, dv] item values (the value path is item-only).
        side_q: per side source, queries [B, H, nq, d_s], or [H, nq, d_s] /
            [1, H, nq, d_s] when shared by the batch (position): expanded with stride 0,
            never copied. ``d_s`` may differ per source and from ``dh``.
        side_k: the matching keys [B, H, nk, d_s] (same broadcasting).
        fusion: ``"sum"``, ``"concat"`` or ``"gate"``.
        fusion_params: ``[]`` / ``[W [nk, S*nk], b [nk]]`` / ``[W1 [a, nk], b1 [a],
            w2 [1, a], b2 [1]]``; see :func:`init_fusion_params`. Differentiable.
        key_padding_mask: [B, nk] bool, True at real keys (sequences are LEFT-padded).
            None = all real.
        causal: query i sees keys j <= i only (needs nq == nk); False = bidirectional.
        scale: multiplies the fused scores; None = ``1/sqrt(dh)`` (DIF-SR's code: fuse
            the raw scores, then divide by sqrt(item head size)). Scale ``side_q`` for a
            per-source scale.
        fusion_sees_masked: False (default): disallowed entries (padding keys, and future
            keys under ``causal``) are zeroed BEFORE the fusion, so for gate/concat the
            output never depends on them. True: DIF-SR's code exactly, where W1 / W see the
            full raw rows, future keys included (a causal leak when every position is
            trained on its next item). Irrelevant for sum.
        dropout_p: dropout on the attention probabilities, in [0, 1); active only when
            ``training``.
        training: apply dropout.
        seed: dropout seed (int or one-element int64 CPU tensor). None: drawn from
            ``generator`` (default: torch's global generator), so ``torch.manual_seed``
            makes runs reproducible. The keep mask is a hash of (seed, element index) -
            ``seqrec.ops.reference.dif_attention.dropout_keep_mask`` - identical in the
            kernel, its backward and the reference.
        generator: see ``seed``.
        backend: None (process default), ``"seqrec"`` (compiled op) or ``"reference"``
            (plain PyTorch, same math and same dropout mask).

    Returns:
        out [B, H, nq, dv]. A query row with no allowed key (e.g. a padding position under
        causal masking with left padding) is exactly 0 and passes 0 gradient, never NaN.
        Query rows are never masked themselves: in bidirectional mode a padding query
        attends to the real keys like any other.

    Raises:
        ValueError: bad side-tensor shapes, dropout_p outside [0, 1), unknown fusion.
        RuntimeError: from the op, naming the argument (dtype, shapes, devices, fusion
            parameter shapes, mask).
    """
    B, H, nq = q.shape[0], q.shape[1], q.shape[2]
    nk = k.shape[2]
    if len(side_q) != len(side_k):
        raise ValueError(f"dif_attention: side_q and side_k must have the same length, got "
                         f"{len(side_q)} and {len(side_k)}")
    side_q = [_expand_side(t, B, H, nq, f"side_q[{i}]") for i, t in enumerate(side_q)]
    side_k = [_expand_side(t, B, H, nk, f"side_k[{i}]") for i, t in enumerate(side_k)]
    fusion_params = list(fusion_params or [])
    if fusion not in FUSIONS:
        raise ValueError(f"dif_attention: fusion must be one of {FUSIONS}, got {fusion!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dif_attention: dropout_p must be in [0, 1), got {dropout_p}")
    p = float(dropout_p) if training else 0.0

    seed_t = seed_tensor(seed, generator, op="dif_attention") if p > 0.0 else None

    if get_backend(backend) == "reference":
        return reference.dif_attention(
            q, k, v, side_q, side_k, fusion=fusion, fusion_params=fusion_params,
            key_padding_mask=key_padding_mask, causal=causal, scale=scale,
            fusion_sees_masked=fusion_sees_masked, dropout_p=p, training=p > 0.0, seed=seed_t)
    out_dtype = q.dtype
    if out_dtype in _HALF_DTYPES:
        # Half inputs (autocast): computed in float32 (accumulation included), out cast
        # back; autograd through the casts gives half gradients. Scale as q's head size.
        q, k, v = (t.float() for t in (q, k, v))
        side_q, side_k = [t.float() for t in side_q], [t.float() for t in side_k]
        fusion_params = [t.float() for t in fusion_params]
    out, _ = _DifAttentionFunction.apply((fusion, causal, scale, fusion_sees_masked, p), len(side_q),
                                         len(fusion_params), q, k, v, *side_q, *side_k, *fusion_params,
                                         key_padding_mask, seed_t)
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------
# CUDA: the reference until a CUDA kernel exists (see _registry.py).

def _reference_with_lse(q, k, v, side_q, side_k, fusion_params, key_padding_mask, seed, fusion, causal,
                        scale, fusion_sees_masked, dropout_p):
    return dif_attention_with_lse(
        q, k, v, side_q, side_k, fusion=fusion, fusion_params=fusion_params,
        key_padding_mask=key_padding_mask, causal=causal, scale=scale,
        fusion_sees_masked=fusion_sees_masked, dropout_p=dropout_p, training=dropout_p > 0.0, seed=seed)


def _dif_attention_cuda(q, k, v, side_q=None, side_k=None, fusion_params=None, key_padding_mask=None, seed=None,
                        *, fusion="sum", causal=True, scale=None, fusion_sees_masked=False, dropout_p=0.0):
    side_q, side_k, fusion_params = list(side_q or []), list(side_k or []), list(fusion_params or [])
    if dropout_p > 0.0 and seed is None:
        raise RuntimeError("dif_attention: argument 'seed' (an int64 tensor with one element) is required "
                           "when dropout_p > 0")
    return _reference_with_lse(q, k, v, side_q, side_k, fusion_params, key_padding_mask, seed, fusion,
                               causal, scale, fusion_sees_masked, dropout_p)


def _dif_attention_backward_cuda(grad_out, q, k, v, side_q, side_k, fusion_params, key_padding_mask, seed,
                                 out, lse, fusion, causal, scale, fusion_sees_masked, dropout_p):
    # The reference's own autograd on detached copies (it recomputes the forward; out
    # and lse are not needed).
    inputs = [q, k, v, *side_q, *side_k, *fusion_params]
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    m, f = len(side_q), len(fusion_params)
    with torch.enable_grad():
        o, _ = _reference_with_lse(leaves[0], leaves[1], leaves[2], leaves[3:3 + m],
                                   leaves[3 + m:3 + 2 * m], leaves[3 + 2 * m:], key_padding_mask, seed,
                                   fusion, causal, scale, fusion_sees_masked, dropout_p)
        got = torch.autograd.grad(o, leaves, grad_out, allow_unused=True)
    g = [torch.zeros_like(t) if gi is None else gi for t, gi in zip(leaves, got)]
    return g[0], g[1], g[2], g[3:3 + m], g[3 + m:3 + 2 * m], g[3 + 2 * m:3 + 2 * m + f]


register_cuda_reference("dif_attention", _dif_attention_cuda)
register_cuda_reference("dif_attention_backward", _dif_attention_backward_cuda)
