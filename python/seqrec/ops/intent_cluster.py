"""``intent_cluster``: soft assignment of positions to intention prototypes, and the
weighted aggregation of positions into one vector per prototype (SINE, DSS).

Python face of ``torch.ops.seqrec.intent_cluster`` (contract:
``csrc/ops/intent_cluster/intent_cluster.h``): fake kernel for ``torch.compile``,
autograd formula calling ``torch.ops.seqrec.intent_cluster_backward``, and the typed
wrapper :func:`intent_cluster`.
"""
from __future__ import annotations

import torch

import seqrec._loader  # noqa: F401  (registers torch.ops.seqrec.*)

from . import reference
from ._autograd import once_differentiable, register_loop_vmap
from ._checks import check_same_device
from ._registry import register_cuda_reference
from .backend import get_backend

__all__ = ["intent_cluster"]


def intent_cluster(
    x: torch.Tensor,
    mask: torch.Tensor,
    prototypes: torch.Tensor,
    tau: float,
    *,
    active: torch.Tensor | None = None,
    active_scale: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    eps: float = 1e-5,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign positions to prototypes and aggregate them into K intention vectors.

    With ``N(u) = F.normalize(F.layer_norm(u, (D,), eps=eps))`` (layer norm *without*
    affine parameters: a model that wants them, or a projection such as SINE's
    ``W_3``, applies them to ``x`` before the call)::

        c_k           = active_scale[b, k] * prototypes[active[b, k]]   (or prototypes[k])
        probs[b,i,k]  = softmax_k(<N(x[b,i]), N(c_k)> / tau)   on real positions, 0 on padding
        intents[b,k]  = sum_i probs[b,i,k] * w[b,(k),i] * values[b,i]

    Args:
        x: ``[B, n, D]`` float32/float64 position representations (float16 /
            bfloat16 are computed in float32, outputs cast back) (SINE: ``X W_3``;
            DSS: the encoder outputs ``z_i``). Any padding layout (seqrec pads on the
            left).
        mask: ``[B, n]`` bool, True at real positions. Padded positions get
            probability 0, contribute nothing and receive zero gradient; a fully
            padded row gives zero intents and zero probabilities (never NaN).
        prototypes: ``[L, D]`` prototype table (SINE's concept pool C, DSS's c_k).
        tau: softmax temperature, > 0.
        active: optional ``[B, K]`` int64 indices into the L prototypes, e.g. SINE's
            per-user top-K concepts. Without it the softmax runs over all L prototypes
            (K = L; DSS).
        active_scale: optional ``[B, K]`` factor multiplying the selected prototypes
            before the normalisation (SINE's ``sigmoid(s[idx])``); needs ``active``.
            Note that layer norm followed by L2 normalisation is invariant to a
            positive rescaling, so a positive ``active_scale`` does not change the
            outputs and its gradient is zero up to rounding. It is accepted so that
            SINE's equation can be written literally; SINE's top-K choice stays
            differentiable through the model's other use of the scaled prototypes
            (``probs @ C_u`` in the interest-aggregation module).
        weights: optional per-position weights, ``[B, n]`` shared by all prototypes
            (DSS's ``p(i)``) or ``[B, K, n]`` per prototype (SINE's ``P_{t|k}``).
            Absent means all ones (plain soft-cluster sums).
        values: optional ``[B, n, Dv]`` vectors to aggregate; absent means ``x``
            itself (DSS). SINE aggregates the raw item embeddings ``X`` while it
            assigns ``X W_3``: pass ``x = X @ W_3``, ``values = X``.
        eps: layer-norm epsilon, > 0.
        backend: ``"seqrec"`` (the fused C++ kernel) or ``"reference"`` (plain
            PyTorch); None uses the process-wide default.

    Returns:
        ``(intents [B, K, Dv], probs [B, n, K])``. The model applies its own bias /
        layer norm to ``intents`` (SINE's LN_3, DSS's ``LN(beta_k + ...)``).

    Differentiable w.r.t. ``x``, ``prototypes``, ``active_scale``, ``weights`` and
    ``values``. The backward recomputes the normalised vectors instead of saving
    them: autograd keeps only the inputs and ``probs`` (``[B, n, K]``, never
    ``[B, n, L]`` when ``active`` is given).
    """
    if get_backend(backend) == "reference":
        return reference.intent_cluster(
            x, mask, prototypes, tau, active=active, active_scale=active_scale,
            weights=weights, values=values, eps=eps,
        )
    out_dtype = x.dtype
    floats = (x, prototypes, active_scale, weights, values)
    if any(t is not None and t.dtype in (torch.float16, torch.bfloat16) for t in floats):
        # Half inputs (autocast, which can hand over a mix: DSS's float32 states with
        # bf16 attention weights): computed in float32, outputs cast back to x's dtype.
        x, prototypes, active_scale, weights, values = (
            t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t for t in floats)
    intents, probs = _IntentClusterFunction.apply(
        x, mask, prototypes, tau, active, active_scale, weights, values, eps
    )
    return intents.to(out_dtype), probs.to(out_dtype)


@torch.library.register_fake("seqrec::intent_cluster")
def _intent_cluster_fake(x, mask, prototypes, tau, active=None, active_scale=None,
                         weights=None, values=None, eps=1e-5):
    check_same_device("intent_cluster", x=x, mask=mask, prototypes=prototypes, active=active,
                      active_scale=active_scale, weights=weights, values=values)
    torch._check(x.dim() == 3, lambda: "intent_cluster: argument 'x' must be [B, n, D]")
    torch._check(prototypes.dim() == 2, lambda: "intent_cluster: argument 'prototypes' must be [L, D]")
    b, n, d = x.shape
    k = active.shape[1] if active is not None else prototypes.shape[0]
    dv = values.shape[2] if values is not None else d
    return x.new_empty((b, k, dv)), x.new_empty((b, n, k))


@torch.library.register_fake("seqrec::intent_cluster_backward")
def _intent_cluster_backward_fake(grad_intents, grad_probs, x, mask, prototypes, probs, tau,
                                  active, active_scale, weights, values, eps, output_mask):
    check_same_device("intent_cluster_backward", grad_intents=grad_intents, grad_probs=grad_probs, x=x,
                      mask=mask, prototypes=prototypes, probs=probs, active=active,
                      active_scale=active_scale, weights=weights, values=values)
    def pick(wanted: bool, like: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty(like.shape) if wanted and like is not None else x.new_empty((0,))

    return (
        pick(output_mask[0], x),
        pick(output_mask[1], prototypes),
        pick(output_mask[2], active_scale),
        pick(output_mask[3], weights),
        pick(output_mask[4], values),
    )


def _setup_context(ctx, inputs, output):
    x, mask, prototypes, tau, active, active_scale, weights, values, eps = inputs
    _, probs = output
    # Only the inputs and probs [B, n, K]: the normalised vectors are recomputed.
    ctx.save_for_backward(x, mask, prototypes, probs, active, active_scale, weights, values)
    ctx.tau = tau
    ctx.eps = eps


# Once differentiable: the backward op has no derivative of its own, so a second
# derivative (create_graph=True, gradgradcheck, torch.func.hessian) raises instead of
# silently treating the backward as constant (which gave zero second derivatives).
@once_differentiable("intent_cluster")
def _backward(ctx, grad_intents, grad_probs):
    x, mask, prototypes, probs, active, active_scale, weights, values = ctx.saved_tensors
    # The dispatcher drops trailing arguments left at their defaults; pad to all nine.
    need = tuple(ctx.needs_input_grad) + (False,) * (9 - len(ctx.needs_input_grad))
    output_mask = [need[0], need[2], need[5], need[6], need[7]]
    if grad_intents is None:
        k = probs.shape[2]
        dv = x.shape[2] if values is None else values.shape[2]
        grad_intents = x.new_zeros((x.shape[0], k, dv))
    if grad_probs is None:
        grad_probs = torch.zeros_like(probs)
    gx, gproto, gscale, gw, gv = torch.ops.seqrec.intent_cluster_backward.default(
        grad_intents, grad_probs, x, mask, prototypes, probs, ctx.tau, active, active_scale,
        weights, values, ctx.eps, output_mask,
    )
    return (
        gx if need[0] else None,
        None,
        gproto if need[2] else None,
        None,
        None,
        gscale if need[5] else None,
        gw if need[6] else None,
        gv if need[7] else None,
        None,
    )


torch.library.register_autograd(
    "seqrec::intent_cluster", _backward, setup_context=_setup_context
)


class _IntentClusterFunction(torch.autograd.Function):
    """The same formula as an ``autograd.Function`` in the setup_context form (the op's
    arguments, in order), which the wrapper calls: ``torch.func`` transforms accept it,
    while the autograd generated by ``register_autograd`` they refuse."""

    generate_vmap_rule = True  # through the ops' batching rules (register_loop_vmap)

    @staticmethod
    def forward(x, mask, prototypes, tau, active, active_scale, weights, values, eps):
        return torch.ops.seqrec.intent_cluster.default(
            x, mask, prototypes, tau, active, active_scale, weights, values, eps)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


register_loop_vmap("intent_cluster")
register_loop_vmap("intent_cluster_backward")


# ---------------------------------------------------------------------------------------
# CUDA: the reference until a CUDA kernel exists (see _registry.py).

def _intent_cluster_cuda(x, mask, prototypes, tau, active=None, active_scale=None, weights=None,
                         values=None, eps=1e-5):
    return reference.intent_cluster(x, mask, prototypes, tau, active=active, active_scale=active_scale,
                                    weights=weights, values=values, eps=eps)


def _intent_cluster_backward_cuda(grad_intents, grad_probs, x, mask, prototypes, probs, tau, active,
                                  active_scale, weights, values, eps, output_mask):
    # The reference's own autograd, on detached copies: the backward of the same math.
    diff = [x, prototypes, active_scale, weights, values]
    leaves = [t.detach().requires_grad_(bool(want)) if t is not None else None
              for t, want in zip(diff, output_mask)]
    wanted = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
    grads = [x.new_empty((0,))] * 5
    if wanted:
        with torch.enable_grad():
            intents, probs_ref = reference.intent_cluster(
                leaves[0], mask, leaves[1], tau, active=active, active_scale=leaves[2],
                weights=leaves[3], values=leaves[4], eps=eps)
            got = torch.autograd.grad((intents, probs_ref), [leaves[i] for i in wanted],
                                      (grad_intents, grad_probs), allow_unused=True)
        for i, g in zip(wanted, got):
            grads[i] = torch.zeros_like(leaves[i]) if g is None else g
    return tuple(grads)


register_cuda_reference("intent_cluster", _intent_cluster_cuda)
register_cuda_reference("intent_cluster_backward", _intent_cluster_backward_cuda)
