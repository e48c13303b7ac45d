"""Plain-PyTorch reference of ``dif_attention`` (DIF-SR's decoupled side-information
attention): the same math as the compiled operator, every intermediate materialised.

See ``seqrec.ops.dif_attention.dif_attention`` for the full contract; this module only
computes it. It is the ``backend="reference"`` path, the oracle of the tests and the
baseline of ``benchmarks/bench_dif_attention.py``. Its dropout draws the very same keep
mask as the kernel (:func:`~seqrec.ops.reference.dropout.dropout_keep_mask`, a
counter-based hash of the seed and the element's index), so the two agree even with
dropout on.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .._checks import check_host_tensor, check_same_device
from .dropout import dropout_keep_mask

__all__ = ["dif_attention", "dif_attention_with_lse", "dropout_keep_mask", "FUSIONS"]  # dropout_keep_mask: re-exported

FUSIONS = ("sum", "concat", "gate")


def _check_fusion_params(fusion: str, params: Sequence[Tensor], nk: int, num_sources: int) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"dif_attention: fusion must be one of {FUSIONS}, got {fusion!r}")
    want = {"sum": 0, "concat": 2, "gate": 4}[fusion]
    if len(params) != want:
        raise ValueError(f"dif_attention: fusion {fusion!r} takes {want} fusion_params, got {len(params)}")
    if fusion == "concat":
        w, b = params
        if tuple(w.shape) != (nk, num_sources * nk) or tuple(b.shape) != (nk,):
            raise ValueError(
                f"dif_attention: concat needs W [{nk}, {num_sources * nk}] and b [{nk}], got "
                f"{tuple(w.shape)} and {tuple(b.shape)}")
    elif fusion == "gate":
        w1, b1, w2, b2 = params
        a = w1.shape[0] if w1.dim() == 2 else -1
        if (tuple(w1.shape) != (a, nk) or tuple(b1.shape) != (a,) or tuple(w2.shape) != (1, a)
                or tuple(b2.shape) != (1,)):
            raise ValueError(
                f"dif_attention: gate needs W1 [a, {nk}], b1 [a], w2 [1, a], b2 [1], got "
                f"{[tuple(t.shape) for t in params]}")


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
) -> Tensor:
    """Reference of :func:`seqrec.ops.dif_attention` (same arguments, same result).

    Materialises the [B, H, nq, S, nk] score stack, the fused scores, the probabilities
    and the dropout mask. Side tensors must already be [B, H, n, d] (expanded views are
    fine). With dropout active and ``seed`` None, a seed is drawn from ``generator`` as
    the wrapper does.
    """
    return dif_attention_with_lse(
        q, k, v, side_q, side_k, fusion=fusion, fusion_params=fusion_params,
        key_padding_mask=key_padding_mask, causal=causal, scale=scale,
        fusion_sees_masked=fusion_sees_masked, dropout_p=dropout_p, training=training, seed=seed,
        generator=generator)[0]


def dif_attention_with_lse(
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
) -> tuple[Tensor, Tensor]:
    """:func:`dif_attention` and the per-row log-sum-exp of the masked scaled logits
    ([B, H, nq], -inf for a row with no allowed key): both outputs of the op
    ``seqrec::dif_attention``, which devices without a kernel run through this."""
    side_q, side_k = list(side_q), list(side_k)
    fusion_params = list(fusion_params or [])
    check_same_device("dif_attention", q=q, k=k, v=v, side_q=side_q, side_k=side_k,
                      fusion_params=fusion_params, key_padding_mask=key_padding_mask)
    if isinstance(seed, Tensor):
        check_host_tensor("dif_attention", "seed", seed)
    B, H, nq, _ = q.shape
    nk = k.size(2)
    S = 1 + len(side_q)
    _check_fusion_params(fusion, fusion_params, nk, S)
    if scale is None:
        scale = q.size(-1) ** -0.5

    # Raw (unscaled) score matrix of every source, as in DIF-SR's code.
    raw = [torch.matmul(q, k.transpose(-1, -2))]
    raw += [torch.matmul(sq, sk.transpose(-1, -2)).expand(B, H, nq, nk) for sq, sk in zip(side_q, side_k)]
    X = torch.stack(raw, dim=-2)  # [B, H, nq, S, nk]

    allowed = torch.ones(nq, nk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed.expand(B, 1, nq, nk)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    active = allowed.any(dim=-1, keepdim=True)  # [B, 1, nq, 1]
    if not fusion_sees_masked:
        X = X.masked_fill(~allowed.unsqueeze(-2), 0.0)

    if fusion == "sum":
        fused = X.sum(dim=-2)
    elif fusion == "concat":
        w, b = fusion_params
        fused = torch.nn.functional.linear(X.flatten(-2), w, b)
    else:
        w1, b1, w2, b2 = fusion_params
        hidden = torch.relu(torch.nn.functional.linear(X, w1, b1))  # [B, H, nq, S, a]
        energy = torch.nn.functional.linear(hidden, w2, b2)          # [B, H, nq, S, 1]
        weights = torch.softmax(energy, dim=-2)
        fused = (weights * X).sum(dim=-2)

    logits = fused * scale
    lse = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # [B, H, nq]
    # Fully masked rows get 0 logits instead of -inf so softmax and its gradient stay
    # finite; the rows are zeroed right after.
    logits = logits.masked_fill(~allowed & active, float("-inf")).masked_fill(~active, 0.0)
    probs = torch.softmax(logits, dim=-1) * active.to(q.dtype)
    if training and dropout_p > 0.0:
        if seed is None:
            seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (1,), dtype=torch.int64, generator=generator)
        keep = dropout_keep_mask(seed, (B, H, nq, nk), dropout_p, device=q.device)
        probs = probs * keep.to(q.dtype) * (1.0 / (1.0 - dropout_p))
    return torch.matmul(probs, v), lse
