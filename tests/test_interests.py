"""seqrec.eval.interests: interest distinctness, NMI, concept / planted-intent agreement."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrec.data import synthetic
from seqrec.eval.interests import (
    concept_intent_agreement,
    interest_cosine,
    interest_distinctness,
    last_items,
    normalized_mutual_info,
)
from seqrec.models import build_model
from seqrec.train import TrainConfig, Trainer


def test_interest_cosine_known_values():
    e = torch.eye(3)
    rows = torch.stack([
        e,  # orthogonal: 0
        torch.ones(3, 3),  # identical: 1
        torch.stack([e[0], -e[0], e[1]]),  # pairs: -1, 0, 0 -> -1/3
        torch.stack([e[0] * 5, e[0] + e[1], torch.zeros(3)]),  # 1/sqrt2, 0, 0 (zero vector)
    ])
    torch.testing.assert_close(interest_cosine(rows), torch.tensor([0.0, 1.0, -1 / 3, 1 / (3 * math.sqrt(2))]))
    with pytest.raises(ValueError, match="needs K >= 2"):
        interest_cosine(torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match=r"\[B, K, D\]"):
        interest_cosine(torch.randn(2, 4))


def test_nmi_matches_hand_computation():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_info(a, a) == pytest.approx(1.0)
    assert normalized_mutual_info(a, np.array(["x", "x", "z", "z", "y", "y"])) == pytest.approx(1.0)  # renamed
    assert normalized_mutual_info(a, np.zeros(6)) == 0.0
    assert normalized_mutual_info(np.zeros(4), np.ones(4)) == 1.0  # both a single cluster
    # Independent labelings: I = 0.
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    # A hand case: A = [0,0,0,1], B = [0,0,1,1].
    pa, pb = np.array([0.75, 0.25]), np.array([0.5, 0.5])
    joint = np.array([[0.5, 0.25], [0.0, 0.25]])
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum()
    h = lambda p: -(p * np.log(p)).sum()  # noqa: E731
    assert normalized_mutual_info([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(mi / ((h(pa) + h(pb)) / 2))
    with pytest.raises(ValueError, match="same length"):
        normalized_mutual_info([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        normalized_mutual_info([], [])


def test_last_items_lines_up_with_the_csr():
    ds = synthetic(num_users=30, num_items=40, seed=2)
    seq, lengths, flat = last_items(ds, 7)
    assert seq.shape == (30, 7)
    for u in range(30):
        items = ds.sequence(u)[-7:]
        assert lengths[u] == len(items)
        assert seq[u, -len(items):].tolist() == items.tolist()
        assert np.all(seq[u, : 7 - len(items)].numpy() == 0)
        assert np.all(ds.items[flat[u][flat[u] >= 0]] == items)
    with pytest.raises(ValueError, match="max_len"):
        last_items(ds, 0)


@pytest.fixture(scope="module")
def trained():
    ds = synthetic(num_users=400, num_items=150, seed=1)
    torch.manual_seed(0)
    model = build_model("sine", num_items=ds.num_items, max_len=20, hidden_size=32, num_prototypes=40)
    before = concept_intent_agreement(model, ds)
    Trainer(model, ds.leave_one_out(max_len=20),
            TrainConfig(epochs=4, batch_size=64, lr=3e-3, patience=0, seed=0, num_negatives=20)).fit()
    return ds, model, before


@pytest.mark.slow  # minutes on 2 loaded cores; `make test-fast` leaves it out
def test_trained_concepts_recover_planted_intents(trained):
    ds, model, before = trained
    after = concept_intent_agreement(model, ds)
    assert after["positions"] == int(np.minimum(ds.lengths, 20).sum())
    assert 1 <= after["concepts_used"] <= 40
    # Training moves both agreements up clearly, to a good level (8 planted intents).
    assert after["position_nmi"] > before["position_nmi"] + 0.2 and after["position_nmi"] > 0.4
    assert after["item_nmi"] > before["item_nmi"] + 0.2 and after["item_nmi"] > 0.5
    assert model.training  # mode restored


def test_interest_distinctness_on_trained_model(trained):
    ds, model, _ = trained
    seq, lengths, _ = last_items(ds, 20)
    res = interest_distinctness(model, seq, lengths, batch_size=128)
    assert res["per_user"].shape == (400,)
    with torch.no_grad():
        direct = interest_cosine(model.eval().interests(seq, lengths)).numpy()
        phi = model.interests(seq, lengths)
    model.train()
    np.testing.assert_allclose(res["per_user"], direct, rtol=1e-5, atol=1e-6)
    assert res["mean_cosine"] == pytest.approx(float(direct.mean()), rel=1e-5)
    # Interests of one user are more alike than interests of different users, but not copies.
    other = torch.stack([phi[:, 0], phi.roll(1, dims=0)[:, 1]], dim=1)
    assert res["mean_cosine"] < 0.99
    assert interest_cosine(other).mean() < res["mean_cosine"]
    # The cross-user baseline: slot k of each user against slot k of a partner (never itself).
    assert res["cross_user_cosine"] < res["mean_cosine"]
    unit = torch.nn.functional.normalize(phi, dim=-1)
    order = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    partner = torch.empty_like(order)
    partner[order] = order.roll(1)
    assert bool((partner != torch.arange(400)).all())
    assert res["cross_user_cosine"] == pytest.approx(float((unit * unit[partner]).sum(-1).mean()), rel=1e-5)
    assert math.isnan(interest_distinctness(model, seq[:1], lengths[:1])["cross_user_cosine"])  # one user


def test_agreement_needs_planted_intents():
    ds = synthetic(num_users=20, num_items=30, seed=0)
    model = build_model("sine", num_items=ds.num_items, max_len=10, hidden_size=8, num_prototypes=6)
    filtered = ds.kcore(2)
    filtered.metadata = {}
    with pytest.raises(ValueError, match="no planted intents"):
        concept_intent_agreement(model, filtered)
