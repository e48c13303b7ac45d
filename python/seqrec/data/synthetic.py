"""A synthetic sequential-recommendation dataset with planted structure.

Every item belongs to one latent intent; each intent owns a few categories and the
brands within them. Every user has 2 or 3 intents with mixture weights and, at each
step, either stays in the current intent or switches to another of its own. Within an
intent the next item follows the previous one along a fixed per-intent chain (the
sequential signal a model can learn) or is drawn by popularity (Zipf skew, the signal
a popularity baseline sees). Deterministic by seed; the planted intents are kept in
``dataset.metadata`` so notebooks can measure how well a model recovers them.
"""
from __future__ import annotations

import numpy as np

from .attributes import AttributeField
from .dataset import SequenceDataset


def synthetic(num_users: int = 2000, num_items: int = 600, num_intents: int = 8, *,
              categories_per_intent: int = 3, brands_per_category: int = 4, mean_length: float = 20.0,
              max_length: int = 100, min_length: int = 5, stay_prob: float = 0.8, chain_prob: float = 0.6,
              zipf_exponent: float = 1.0, seed: int = 0) -> SequenceDataset:
    """Generate the dataset (see the module docstring). Raw ids are the strings of
    ``1..num_items`` and ``1..num_users``; item attributes: ``category`` and ``brand``."""
    if num_items < 2 * num_intents:
        raise ValueError(f"num_items ({num_items}) must be at least 2 * num_intents ({2 * num_intents})")
    if num_users < 1 or num_intents < 2:
        raise ValueError("need num_users >= 1 and num_intents >= 2")
    if not (0 <= stay_prob <= 1 and 0 <= chain_prob <= 1):
        raise ValueError("stay_prob and chain_prob must lie in [0, 1]")
    if not (1 <= min_length <= mean_length <= max_length):
        raise ValueError("need 1 <= min_length <= mean_length <= max_length")
    rng = np.random.default_rng(seed)

    # Items: intent, popularity within the intent, category and brand.
    item_intent = rng.permutation(np.arange(num_items) % num_intents)
    members = [np.flatnonzero(item_intent == k) for k in range(num_intents)]
    popularity = []
    chain_next = np.zeros(num_items, np.int64)
    for k, items in enumerate(members):
        ranks = rng.permutation(len(items)) + 1.0
        w = ranks ** -zipf_exponent
        popularity.append(w / w.sum())
        chain = rng.permutation(items)
        chain_next[chain] = np.roll(chain, -1)
    num_categories = num_intents * categories_per_intent
    item_category = item_intent * categories_per_intent + rng.integers(0, categories_per_intent, num_items)
    item_brand = item_category * brands_per_category + rng.integers(0, brands_per_category, num_items)

    # Users: 2-3 intents with Dirichlet weights.
    n_user_intents = rng.integers(2, 4, num_users)
    user_intents = np.full((num_users, 3), -1, np.int64)
    user_weights = np.zeros((num_users, 3))
    for u in range(num_users):
        m = n_user_intents[u]
        user_intents[u, :m] = rng.choice(num_intents, m, replace=False)
        user_weights[u, :m] = rng.dirichlet(np.ones(m))
    lengths = np.clip(min_length + rng.poisson(mean_length - min_length, num_users), min_length, max_length)

    def draw_intent(users):
        w = user_weights[users]
        pick = (rng.random(len(users))[:, None] > np.cumsum(w, axis=1)).sum(axis=1)
        return user_intents[users, np.minimum(pick, n_user_intents[users] - 1)]

    def draw_popular(intents):
        out = np.empty(len(intents), np.int64)
        for k in np.unique(intents):
            idx = np.flatnonzero(intents == k)
            out[idx] = rng.choice(members[k], len(idx), p=popularity[k])
        return out

    seqs = np.zeros((num_users, max_length), np.int64)
    intents_seq = np.zeros((num_users, max_length), np.int64)
    all_users = np.arange(num_users)
    current = draw_intent(all_users)
    seqs[:, 0] = draw_popular(current)
    intents_seq[:, 0] = current
    for t in range(1, max_length):
        switch = rng.random(num_users) > stay_prob
        current = np.where(switch, draw_intent(all_users), current)
        chained = (~switch) & (rng.random(num_users) < chain_prob)
        nxt = draw_popular(current)
        nxt[chained] = chain_next[seqs[chained, t - 1]]
        seqs[:, t] = nxt
        intents_seq[:, t] = current

    mask = np.arange(max_length)[None, :] < lengths[:, None]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = seqs[mask] + 1  # dense ids 1..num_items
    ones = np.arange(num_items + 2, dtype=np.int64)
    ones[0] = 0  # padding item has no value; item i has exactly one
    ones[1:] = np.arange(num_items + 1)
    category = AttributeField("category", "categorical", ones.copy(), item_category + 1,
                              [""] + [f"c{c}" for c in range(num_categories)])
    brand = AttributeField("brand", "categorical", ones.copy(), item_brand + 1,
                           [""] + [f"b{b}" for b in range(num_categories * brands_per_category)])
    return SequenceDataset(
        indptr, items, [str(u + 1) for u in range(num_users)], [""] + [str(i + 1) for i in range(num_items)],
        {"category": category, "brand": brand}, name="synthetic",
        metadata={
            "format": "synthetic", "seed": seed,
            "item_intent": np.concatenate([[-1], item_intent]),  # by dense item id
            "user_intents": user_intents, "position_intents": intents_seq[mask],
        },
    )
