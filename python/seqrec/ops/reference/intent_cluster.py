"""Plain-PyTorch reference of ``seqrec.ops.intent_cluster``.

Written the way a researcher would write SINE's intention assignment / DSS's
intention clustering: layer norm, ``F.normalize``, a batched matmul against the
prototypes, a softmax, a mask, and one more matmul for the aggregation. Autograd keeps
every intermediate ([B, n, D] several times over) for the backward; that is the
baseline the fused kernel is measured against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_same_device


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`seqrec.ops.intent_cluster`; returns (intents, probs).

    Padded positions are ignored whatever they hold (NaN included), as in the kernel:
    they are replaced by 0 before any arithmetic (``torch.where``, so they also get
    exactly zero gradient), and their probabilities are 0.
    """
    check_same_device("intent_cluster", x=x, mask=mask, prototypes=prototypes, active=active,
                      active_scale=active_scale, weights=weights, values=values)
    if not tau > 0:
        raise ValueError(f"intent_cluster: argument 'tau' must be positive, got {tau}")
    if active_scale is not None and active is None:
        raise ValueError("intent_cluster: argument 'active_scale' needs 'active'")
    d = x.shape[-1]
    real = mask.unsqueeze(-1)  # [B, n, 1]
    x = torch.where(real, x, 0.0)
    if values is not None:
        values = torch.where(real, values, 0.0)
    if weights is not None:
        weights = torch.where(mask if weights.dim() == 2 else mask.unsqueeze(1), weights, 0.0)
    xn = F.normalize(F.layer_norm(x, (d,), eps=eps), dim=-1)  # [B, n, D]
    if active is None:
        cn = F.normalize(F.layer_norm(prototypes, (d,), eps=eps), dim=-1)  # [L, D]
        logits = xn @ cn.t()  # [B, n, L]
    else:
        c = prototypes[active]  # [B, K, D]
        if active_scale is not None:
            c = c * active_scale.unsqueeze(-1)
        cn = F.normalize(F.layer_norm(c, (d,), eps=eps), dim=-1)
        logits = xn @ cn.transpose(1, 2)  # [B, n, K]
    probs = torch.where(real, torch.softmax(logits / tau, dim=-1), 0.0)
    q = probs
    if weights is not None:
        q = probs * (weights.unsqueeze(-1) if weights.dim() == 2 else weights.transpose(1, 2))
    intents = q.transpose(1, 2) @ (x if values is None else values)  # [B, K, Dv]
    return intents, probs
