"""Diagnostics of multi-interest models: how distinct a user's interests are, and how
well the model's concepts recover intents planted in synthetic data.

* :func:`interest_cosine` / :func:`interest_distinctness`: mean pairwise cosine between
  a user's K interest vectors (1 = all the same direction, 0 = orthogonal).
* :func:`normalized_mutual_info`: NMI of two labelings, plain NumPy (same definition as
  scikit-learn's default: mutual information over the arithmetic mean of the entropies).
* :func:`concept_intent_agreement`: on :func:`seqrec.data.synthetic` data, NMI between
  the concept each position is assigned to and the intent that generated it, and
  between each item's nearest concept and the item's planted intent.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.dataset import SequenceDataset

__all__ = [
    "interest_cosine",
    "interest_distinctness",
    "normalized_mutual_info",
    "concept_intent_agreement",
    "last_items",
]


def interest_cosine(interests: Tensor) -> Tensor:
    """Mean pairwise cosine similarity between each row's K interest vectors.

    Args:
        interests: ``[B, K, D]`` with K >= 2.

    Returns:
        ``[B]``: the mean over the K (K - 1) / 2 pairs k < l of cos(phi_k, phi_l).
        A zero vector has cosine 0 with everything (F.normalize's floor).
    """
    if interests.dim() != 3:
        raise ValueError(f"interests must be [B, K, D], got shape {tuple(interests.shape)}")
    k = interests.size(1)
    if k < 2:
        raise ValueError(f"interest_cosine needs K >= 2 interests per row, got K = {k}")
    unit = F.normalize(interests.float(), dim=-1)
    gram = unit @ unit.transpose(1, 2)  # [B, K, K]
    off = gram.sum(dim=(1, 2)) - torch.diagonal(gram, dim1=1, dim2=2).sum(-1)
    return off / (k * (k - 1))


def last_items(dataset: SequenceDataset, max_len: int, users: np.ndarray | None = None
               ) -> tuple[Tensor, Tensor, np.ndarray]:
    """The most recent ``max_len`` items of each user's whole sequence, LEFT-padded.

    Returns:
        ``(item_seq [U, n] int64, lengths [U], flat [U, n] int64)`` where ``flat`` holds
        each real position's index into ``dataset.items`` (-1 at padding), so per
        interaction facts (e.g. planted intents) can be laid out like ``item_seq``.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    users = np.arange(dataset.num_users) if users is None else np.asarray(users, dtype=np.int64)
    ends = dataset.indptr[users + 1]
    lengths = np.minimum(ends - dataset.indptr[users], max_len)
    n = max(int(lengths.max(initial=0)), 1)
    cols = np.arange(n)[None, :]
    flat = ends[:, None] - n + cols  # position j of a row holds items[end - n + j]
    real = cols >= n - lengths[:, None]
    flat = np.where(real, flat, -1)
    item_seq = np.where(real, dataset.items[np.maximum(flat, 0)], 0)
    return torch.from_numpy(item_seq), torch.from_numpy(lengths.astype(np.int64)), flat


def _in_eval_batches(model: torch.nn.Module, item_seq: Tensor, lengths: Tensor | None, batch_size: int,
                     fn) -> list[Tensor]:
    """``fn(rows, lengths)`` on the model's device for each batch of rows, in eval mode (the
    mode is restored afterwards); the outputs come back on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outputs = []
        for start in range(0, item_seq.size(0), batch_size):
            rows = item_seq[start : start + batch_size].to(device)
            lens = None if lengths is None else lengths[start : start + batch_size].to(device)
            outputs.append(fn(rows, lens).cpu())
    finally:
        model.train(was_training)
    return outputs


@torch.no_grad()
def interest_distinctness(model: torch.nn.Module, item_seq: Tensor, lengths: Tensor | None = None,
                          batch_size: int = 1024, seed: int = 0) -> dict:
    """Interest distinctness of ``model`` (anything with ``interests(item_seq, lengths)
    -> [B, K, D]``) on the given LEFT-padded sequences, in eval mode.

    The within-user cosine alone is hard to read (embedding spaces are anisotropic), so
    a baseline comes with it: the mean cosine between interest k of a user and interest
    k of another user (a fixed random pairing drawn with ``seed``).

    Returns:
        ``{"mean_cosine": float, "per_user": np.ndarray [U], "cross_user_cosine": float}``
        over the U rows of length > 0 (an empty row's interests carry no information);
        ``cross_user_cosine`` is NaN with fewer than 2 such rows.
    """
    units = _in_eval_batches(model, item_seq, lengths, batch_size,
                             lambda rows, lens: F.normalize(model.interests(rows, lens).float(), dim=-1))
    keep = (item_seq != 0).any(dim=1)
    unit = torch.cat(units)[keep] if units else torch.zeros(0, 2, 1)
    per_user = interest_cosine(unit).numpy() if len(unit) else np.zeros(0, np.float32)
    cross = float("nan")
    if len(unit) >= 2:
        # A derangement: each user is paired with its predecessor in a random order.
        order = torch.randperm(len(unit), generator=torch.Generator().manual_seed(seed))
        partner = torch.empty_like(order)
        partner[order] = order.roll(1)
        cross = float((unit * unit[partner]).sum(-1).mean())
    return {"mean_cosine": float(per_user.mean()) if len(per_user) else float("nan"),
            "per_user": per_user, "cross_user_cosine": cross}


def normalized_mutual_info(labels_a, labels_b) -> float:
    """NMI of two labelings of the same samples: ``I(A; B) / ((H(A) + H(B)) / 2)``.

    Labels may be any hashable NumPy values; they are compared only for equality, so
    the result is invariant to renaming clusters. 1.0 when the two partitions are
    identical (also when both put everything in one cluster), 0.0 when one of them is
    a single cluster and the other is not.
    """
    a = np.asarray(labels_a).reshape(-1)
    b = np.asarray(labels_b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labelings must have the same length, got {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("labelings are empty")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    na, nb = int(ai.max()) + 1, int(bi.max()) + 1
    joint = np.bincount(ai * nb + bi, minlength=na * nb).reshape(na, nb) / a.size
    pa, pb = joint.sum(1), joint.sum(0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    ha, hb = entropy(pa), entropy(pb)
    if ha == 0.0 and hb == 0.0:
        return 1.0
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    return float(np.clip(mi / ((ha + hb) / 2), 0.0, 1.0))


@torch.no_grad()
def concept_intent_agreement(model: torch.nn.Module, dataset: SequenceDataset, max_len: int | None = None,
                             users: np.ndarray | None = None, batch_size: int = 1024) -> dict:
    """How well a concept-based model recovers the planted intents of synthetic data.

    The model is a :class:`~seqrec.models.SINE` (``encode`` returns ``assignment``
    ``[B, n, K]``, P(k | position), and ``concepts`` ``[B, K]``, which of the L
    prototypes the K columns are). DSS has its own: :mod:`seqrec.eval.dss_intents`. The dataset must carry ``metadata["position_intents"]``
    and ``metadata["item_intent"]`` (:func:`seqrec.data.synthetic` does).

    Two agreements, both NMI (:func:`normalized_mutual_info`):

    * ``position_nmi``: each real position of each user's most recent ``max_len``
      items gets the concept with the highest assignment probability (SINE: one of the
      user's activated concepts), compared with the intent that generated it;
    * ``item_nmi`` (models whose :meth:`~seqrec.models.base.SequentialRecommender.item_concepts`
      is not None, i.e. SINE):
      each item is assigned to its nearest prototype over the whole pool (the cosine
      of layer-normed ``E_i W_3`` and ``C_l``, as in the intention assignment),
      compared with the item's intent.

    Returns:
        ``{"position_nmi", "item_nmi" (or None), "concepts_used": number of distinct
        concepts the positions were assigned to, "positions": count}``.
    """
    meta = getattr(dataset, "metadata", {}) or {}
    if "position_intents" not in meta or "item_intent" not in meta:
        raise ValueError("dataset has no planted intents (metadata 'position_intents' / 'item_intent'); "
                         "use seqrec.data.synthetic")
    position_intents = np.asarray(meta["position_intents"])
    if len(position_intents) != dataset.num_interactions:
        raise ValueError("metadata 'position_intents' does not match the interactions (was the dataset filtered?)")
    max_len = max_len or model.config.max_len
    item_seq, lengths, flat = last_items(dataset, max_len, users)
    def best_concept(rows: Tensor, lens: Tensor) -> Tensor:
        out = model.encode(rows, lens)
        best = out.assignment.argmax(dim=-1)  # [b, n] column of the best concept
        return torch.gather(out.concepts, 1, best)

    predicted = torch.cat(_in_eval_batches(model, item_seq, lengths, batch_size, best_concept)).numpy()
    real = flat >= 0
    concept_of_position = predicted[real]
    planted = position_intents[flat[real]]
    result = {
        "position_nmi": normalized_mutual_info(concept_of_position, planted),
        "concepts_used": int(len(np.unique(concept_of_position))),
        "positions": int(real.sum()),
        "item_nmi": None,
    }
    nearest = model.item_concepts()  # None for models without a prototype pool
    if nearest is not None:
        result["item_nmi"] = normalized_mutual_info(nearest.cpu().numpy(), np.asarray(meta["item_intent"])[1:])
    return result
