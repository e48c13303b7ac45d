"""How well DSS's intention clustering p(k|i) recovers planted intents.

On :func:`seqrec.data.synthetic` data every position has a planted intent
(``dataset.metadata["position_intents"]``). :func:`intention_recovery` encodes every
user's sequence with a :class:`~seqrec.models.DSS`, assigns each real position to its
most probable intention ``argmax_k p(k|i)`` and compares these clusters with the planted
intents: normalised mutual information (arithmetic-mean normalisation, sklearn's
default), purity, and the contingency table to plot.
"""
from __future__ import annotations

import numpy as np
import torch

from .interests import normalized_mutual_info  # one NMI for SINE and DSS

__all__ = ["normalized_mutual_info", "intention_recovery"]


@torch.no_grad()
def intention_recovery(model, dataset, *, max_len: int | None = None, batch_size: int = 512) -> dict:
    """Compare ``argmax_k p(k|i)`` of ``model`` with the planted intent of every position.

    Args:
        model: a :class:`seqrec.models.DSS` (anything with ``encode(item_seq)`` returning
            ``assignments [B, n, K]``).
        dataset: a synthetic :class:`SequenceDataset` (its metadata holds
            ``position_intents``, one per interaction, in ``dataset.items`` order).
        max_len: encode the last ``max_len`` items of each user (default: the model's).
        batch_size: users per forward pass.

    Returns:
        dict with ``nmi``, ``purity`` (share of positions whose intention's most common
        planted intent is theirs), ``contingency`` (``[K, P]`` counts: rows the model's
        intentions, columns the planted intents), ``positions`` (count), ``used``
        (how many of the K intentions win at least one position).
    """
    planted = dataset.metadata.get("position_intents") if getattr(dataset, "metadata", None) else None
    if planted is None:
        raise ValueError("dataset has no planted intents (metadata['position_intents']); "
                         "use seqrec.data.synthetic")
    planted = np.asarray(planted)
    max_len = int(max_len or model.config.max_len)
    indptr, items = np.asarray(dataset.indptr), np.asarray(dataset.items)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    truth, pred = [], []
    try:
        for start in range(0, dataset.num_users, batch_size):
            users = np.arange(start, min(start + batch_size, dataset.num_users))
            lo = np.maximum(indptr[users + 1] - max_len, indptr[users])
            hi = indptr[users + 1]
            width = int((hi - lo).max(initial=1)) or 1
            seq = np.zeros((len(users), width), np.int64)
            for row, (a, b) in enumerate(zip(lo, hi)):
                if b > a:
                    seq[row, width - (b - a):] = items[a:b]
                    truth.append(planted[a:b])
            ids = torch.from_numpy(seq).to(device)
            assign = model.encode(ids).assignments.argmax(-1).cpu().numpy()
            pred.append(assign[seq != 0])
    finally:
        model.train(was_training)
    truth_all, pred_all = np.concatenate(truth), np.concatenate(pred)
    k = int(model.config.num_intentions)
    num_planted = int(planted.max()) + 1
    contingency = np.zeros((k, num_planted), np.int64)
    np.add.at(contingency, (pred_all, truth_all), 1)
    return {
        "nmi": normalized_mutual_info(truth_all, pred_all),
        "purity": float(contingency.max(1).sum() / contingency.sum()),
        "contingency": contingency,
        "positions": int(contingency.sum()),
        "used": int((contingency.sum(1) > 0).sum()),
    }
