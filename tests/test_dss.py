"""DSS (seqrec.models.dss): equations, losses against direct formulas, causality,
reproducibility, training on synthetic data, CLI."""
from __future__ import annotations

import json

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import DSS, DSSConfig, build_model
from seqrec.models.dss import info_nce_pairs
from seqrec.models.losses import mixture_nll
from seqrec.train import TrainConfig, Trainer

NUM_ITEMS = 23
MAX_LEN = 10
K = 3
D = 16


def make_model(**overrides) -> DSS:
    fields = dict(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_size=D, num_intentions=K,
                  num_layers=1, seq2seq_weight=0.5)
    fields.update(overrides)
    torch.manual_seed(0)
    return DSS(DSSConfig(**fields))


def make_batch(lengths, n=MAX_LEN, num_items=NUM_ITEMS, seed=0, negatives=1):
    """A trainer-like batch: inputs x_1..x_m left-padded, targets x_2..x_{m+1}."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    full = torch.randint(1, num_items + 1, (len(lengths), n + 1), generator=gen)
    real = torch.arange(n) >= (n - lengths).unsqueeze(1)
    shape = (len(lengths), n) if negatives == 1 else (len(lengths), n, negatives)
    neg = torch.randint(1, num_items + 1, shape, generator=gen)
    neg = neg * (real if negatives == 1 else real.unsqueeze(-1))
    return full[:, :-1] * real, full[:, 1:] * real, neg


# ---------------------------------------------------------------- direct formulas


def direct_phi(model: DSS, z: torch.Tensor, mask: torch.Tensor, b: int, t: int, beta) -> torch.Tensor:
    """phi_k(x_1..t) of row b, written position by position from the module docstring."""
    d = z.size(-1)
    cfg = model.config
    protos = F.normalize(F.layer_norm(model.prototypes, (d,), eps=cfg.cluster_eps), dim=-1)
    q = model.query_norm(z[b, t] + model.query_bias)
    idx = [i for i in range(t + 1) if mask[b, i]]
    logits, pk = [], []
    for i in idx:
        zk = model.key_norm(z[b, i])
        key = zk + torch.relu(model.key_map(zk)) + model.distance.weight[t - i]
        logits.append((q * key).sum() / math.sqrt(d))
        zi = F.normalize(F.layer_norm(z[b, i], (d,), eps=cfg.cluster_eps), dim=-1)
        pk.append(torch.softmax(protos @ zi / cfg.tau, 0))  # [K]
    p_i = torch.softmax(torch.stack(logits), 0)
    raw = sum(pk[j][:, None] * p_i[j] * z[b, i] for j, i in enumerate(idx))
    return model.out_norm(beta + raw)  # [K, D]


def test_encoder_matches_the_equations_and_the_op_path():
    model = make_model().eval()
    inputs, *_ = make_batch([10, 6, 1])
    mask = inputs != 0
    z = model.states(inputs, mask)
    prefix = model.prefix_interests(inputs)  # bmm path, every prefix
    enc = model.encode(inputs)  # intent_cluster op path, latest position
    for b in range(3):
        for t in range(MAX_LEN):
            if mask[b, t]:
                expected = direct_phi(model, z, mask, b, t, model.beta_past)
                torch.testing.assert_close(prefix[b, t], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(enc.interests[b], direct_phi(model, z, mask, b, MAX_LEN - 1,
                                                                 model.beta_past), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(prefix[:, -1], enc.interests, atol=1e-5, rtol=1e-4)
    future = model.encode(inputs, future=True).interests
    torch.testing.assert_close(future[0], direct_phi(model, z, mask, 0, MAX_LEN - 1, model.beta_future),
                               atol=1e-5, rtol=1e-4)
    # p(k|i) sums to 1 at real positions, p(i) to 1 over a row; both 0 at padding.
    torch.testing.assert_close(enc.assignments.sum(-1), mask.float())
    torch.testing.assert_close(enc.weights.sum(-1), torch.ones(3))
    assert (enc.weights[~mask] == 0).all() and (enc.assignments[~mask] == 0).all()
    assert enc.interests.shape == (3, K, D) and model.interests(inputs).shape == (3, K, D)


def test_seq2item_matches_the_mixture_softmax_formula():
    inputs, targets, negatives = make_batch([10, 7, 3, 1], negatives=4)
    for loss_name in ("ce", "sampled"):
        model = make_model(seq2seq_weight=0.0, loss=loss_name).eval()
        phi = model.prefix_interests(inputs)
        emb = model.embedding.item.weight
        total, count = 0.0, 0
        for b, t in (targets > 0).nonzero().tolist():
            neg = negatives[b, t]
            # Sampled: accidental hits (a negative equal to the target) are removed.
            cands = torch.arange(1, NUM_ITEMS + 1) if loss_name == "ce" else torch.cat(
                [targets[b, t : t + 1], neg[neg != targets[b, t]]])
            logits = phi[b, t] @ emb[cands].t()  # [K, C]
            pos = phi[b, t] @ emb[targets[b, t]]  # [K]
            total = total + torch.logsumexp(logits.flatten(), 0) - torch.logsumexp(pos, 0)
            count += 1
        terms = model.loss_terms(inputs, targets, negatives)
        torch.testing.assert_close(terms.terms["seq2item"], total / count)
        torch.testing.assert_close(terms.loss, terms.terms["seq2item"])


def test_mixture_nll_blocked_equals_reference_and_gradcheck():
    torch.manual_seed(0)
    phi = torch.randn(7, 3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (7,))
    ref = mixture_nll(phi, weight, target, backend="reference")
    # Mixed-sign upstream gradients take the general path, positive ones the shifted-GEMM one.
    for grad in (torch.randn(7, dtype=torch.float64), torch.rand(7, dtype=torch.float64) + 0.1):
        g_ref = torch.autograd.grad(ref, (phi, weight), grad, retain_graph=True)
        for chunk in (1, 4, 11, 64):
            out = mixture_nll(phi, weight, target, backend="seqrec", chunk=chunk)
            torch.testing.assert_close(out, ref)
            for a, b in zip(torch.autograd.grad(out, (phi, weight), grad), g_ref):
                torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda p, w: mixture_nll(p, w, target, chunk=4), (phi, weight))
    # Repeated targets accumulate into the same item row.
    same = torch.zeros(7, dtype=torch.long)
    g1 = torch.autograd.grad(mixture_nll(phi, weight, same, chunk=3).sum(), weight)[0]
    g2 = torch.autograd.grad(mixture_nll(phi, weight, same, backend="reference").sum(), weight)[0]
    torch.testing.assert_close(g1, g2)
    with pytest.raises(ValueError, match="target must be"):
        mixture_nll(phi, weight, target[:3])
    with pytest.raises(ValueError, match="phi must be"):
        mixture_nll(phi[0], weight, target)


def direct_info_nce(past, future, eligible, valid_row, scale, lam):
    """Loop version: -log softmax of the positive over every valid (u', k'), kept by the cut."""
    b, k, _ = past.shape
    losses = {}
    for u in range(b):
        for kk in range(k):
            if not eligible[u, kk]:
                continue
            num = (past[u, kk] * future[u, kk]).sum() * scale
            den = [(past[u, kk] * future[v, j]).sum() * scale for v in range(b) if valid_row[v] for j in range(k)]
            losses[(u, kk)] = torch.logsumexp(torch.stack(den), 0) - num
    if not losses:
        return torch.tensor(0.0), 0, 0
    keep = math.ceil(lam * len(losses))
    chosen = sorted(losses, key=lambda key: losses[key].item())[:keep]
    return sum(losses[c] for c in chosen) / keep, keep, len(losses)


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.2])
def test_info_nce_counts_only_present_confident_pairs(lam):
    torch.manual_seed(1)
    past, future = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    eligible = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    valid_row = torch.tensor([True, True, True, False])  # row 3: no split; never a negative
    eligible[3] = False
    loss, kept, count = info_nce_pairs(past, future, eligible, valid_row, scale=0.4, confidence_lambda=lam)
    expected, e_kept, e_count = direct_info_nce(past, future, eligible, valid_row, 0.4, lam)
    torch.testing.assert_close(loss, expected)
    assert (int(kept), int(count)) == (e_kept, e_count)
    # Vectors of an absent pair or of a dropped row get no gradient through the numerator
    # nor as anchors: only as negatives (valid rows) or not at all (row 3).
    past.requires_grad_(True)
    future.requires_grad_(True)
    loss, *_ = info_nce_pairs(past, future, eligible, valid_row, scale=0.4, confidence_lambda=lam)
    loss.backward()
    assert (past.grad[~eligible] == 0).all()
    assert (future.grad[3] == 0).all()
    # Nothing eligible: exactly 0, finite gradient.
    none = torch.zeros_like(eligible)
    loss, kept, count = info_nce_pairs(past, future, none, valid_row, scale=0.4, confidence_lambda=lam)
    assert loss.item() == 0.0 and int(kept) == 0 and int(count) == 0


def test_seq2seq_term_matches_its_assembly_by_hand():
    model = make_model(seq2seq_weight=0.7, confidence_lambda=0.6).eval()
    inputs, targets, _ = make_batch([10, 7, 3, 1, 5], seed=4)
    split = torch.tensor([4, 7, 2, 1, 3])
    terms = model.loss_terms(inputs, targets, split=split)
    m = (inputs != 0).sum(1)
    col = MAX_LEN - m + split - 1
    past = model.prefix_interests(inputs)[torch.arange(5), col]
    future_ids = DSS.reversed_future(inputs, targets, split)
    fut = model.encode(future_ids, future=True)
    enc = model.encode(inputs)  # assignments of every input position
    k = K
    present_past = torch.zeros(5, k, dtype=torch.bool)
    present_future = torch.zeros(5, k, dtype=torch.bool)
    for b in range(5):
        for i in range(MAX_LEN):
            if inputs[b, i] and i <= col[b]:
                present_past[b, enc.assignments[b, i].argmax()] = True
        for i in range(future_ids.size(1)):
            if future_ids[b, i]:
                present_future[b, fut.assignments[b, i].argmax()] = True
    expected, kept, count = direct_info_nce(past, fut.interests, present_past & present_future,
                                            torch.ones(5, dtype=torch.bool), 1 / math.sqrt(D), 0.6)
    torch.testing.assert_close(terms.terms["seq2seq"], expected)
    assert (int(terms.terms["pairs"]), int(terms.terms["present"])) == (kept, count) and count > 0
    torch.testing.assert_close(terms.loss, terms.terms["seq2item"] + 0.7 * terms.terms["seq2seq"])


def test_reversed_future_by_hand():
    inputs = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    targets = torch.tensor([[0, 0, 6, 7, 8], [2, 3, 4, 5, 9]])
    out = DSS.reversed_future(inputs, targets, torch.tensor([1, 3]))
    # row 0: x = 5 6 7 8, t = 1 -> 8 7 6; row 1: x = 1..5 9, t = 3 -> 9 5 4
    assert out.tolist() == [[8, 7, 6], [9, 5, 4]]
    out = DSS.reversed_future(inputs, targets, torch.tensor([3, 1]))
    assert out.tolist() == [[0, 0, 0, 0, 8], [9, 5, 4, 3, 2]]


def test_split_points_are_uniform_and_seeded():
    model = make_model()
    lengths = torch.tensor([1, 4, 9, 0] * 500)
    torch.manual_seed(3)
    a = model.sample_split(lengths)
    torch.manual_seed(3)
    assert torch.equal(a, model.sample_split(lengths))
    assert ((a >= 1) & (a <= lengths.clamp_min(1))).all()
    nine = a[lengths == 9]
    counts = torch.bincount(nine, minlength=10)[1:]
    assert counts.min() > 0.5 * len(nine) / 9  # every split point is drawn, roughly evenly


# ---------------------------------------------------------------- causality, ablation


def test_past_encoder_never_sees_the_future():
    model = make_model().eval()
    inputs, targets, _ = make_batch([10, 8], seed=2)
    t = 5
    changed = inputs.clone()
    changed[:, t + 1 :] = changed[:, t + 1 :] % NUM_ITEMS + 1
    a, b = model.prefix_interests(inputs), model.prefix_interests(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=0)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().amax() > 1e-4
    # The past side of the seq2seq loss (prefix_interests at the split column, see
    # test_seq2seq_term_matches_its_assembly_by_hand) gets no gradient from any item
    # after the split: rows of distinct items, so every embedding row belongs to one
    # position.
    distinct = torch.randperm(NUM_ITEMS, generator=torch.Generator().manual_seed(0))[:20] + 1
    inputs = distinct.view(2, 10)
    past = model.prefix_interests(inputs)[:, t]
    grad = torch.autograd.grad(past.square().sum(), model.embedding.item.weight)[0]
    assert (grad[inputs[:, t + 1 :].flatten()] == 0).all()
    assert (grad[inputs[:, : t + 1].flatten()].abs().sum(-1) > 0).all()


def test_left_padding_invariance():
    model = make_model().eval()
    seq = torch.tensor([4, 17, 9, 20, 2])
    short = seq.unsqueeze(0)
    long = torch.cat([torch.zeros(MAX_LEN - 5, dtype=torch.long), seq]).unsqueeze(0)
    torch.testing.assert_close(model.interests(short), model.interests(long))
    torch.testing.assert_close(model.score(short), model.score(long, torch.tensor([5])))


def test_seq2item_only_ablation_is_weight_zero_and_draws_nothing():
    inputs, targets, _ = make_batch([10, 6, 2], seed=5)
    full = make_model(seq2seq_weight=0.3).eval()
    ablation = make_model(seq2seq_weight=0.0).eval()
    ablation.load_state_dict(full.state_dict())
    state = torch.get_rng_state()
    terms0 = ablation.loss_terms(inputs, targets)
    assert torch.equal(torch.get_rng_state(), state)  # no split drawn, no future pass
    assert terms0.terms["seq2seq"].item() == 0 and int(terms0.terms["pairs"]) == 0
    terms = full.loss_terms(inputs, targets)
    torch.testing.assert_close(terms0.terms["seq2item"], terms.terms["seq2item"])
    torch.testing.assert_close(terms0.loss, terms.loss - 0.3 * terms.terms["seq2seq"])
    assert terms.terms["seq2seq"] > 0
    # build_model / CLI preset spell the same ablation.
    assert DSS.PRESETS["seq2item-only"].model == {"seq2seq_weight": 0.0}


# ---------------------------------------------------------------- training behaviour


def test_gradients_reach_every_parameter_and_backends_agree():
    inputs, targets, negatives = make_batch([10, 7, 3, 1], seed=6)
    model = make_model(hidden_dropout=0.0, attention_dropout=0.0, confidence_lambda=1.0)
    reference = copy.deepcopy(model)
    reference.backend = "reference"
    for layer in reference.encoder.layers:
        layer.attention.backend = "reference"
    split = torch.tensor([3, 5, 2, 1])
    out = model.loss_terms(inputs, targets, negatives, split=split)
    ref = reference.loss_terms(inputs, targets, negatives, split=split)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    for key in ("seq2item", "seq2seq"):
        torch.testing.assert_close(out.terms[key], ref.terms[key], atol=1e-5, rtol=1e-5)
    out.loss.backward()
    ref.loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_noise_beta_is_fresh_noise_in_training_and_zero_at_evaluation():
    model = make_model(beta="noise", hidden_dropout=0.0, attention_dropout=0.0)
    names = dict(model.named_parameters())
    assert "beta_past" not in names and "beta_future" not in names
    assert model.beta_past is None and model.beta_future is None
    inputs, targets, negatives = make_batch([10, 6, 1], seed=4)
    mask = inputs != 0
    model.eval()
    z = model.states(inputs, mask)
    enc = model.encode(inputs)
    for b in range(3):  # beta = its mean, 0
        torch.testing.assert_close(enc.interests[b], direct_phi(model, z, mask, b, MAX_LEN - 1, 0.0),
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.encode(inputs, future=True).interests, enc.interests)
    model.train()
    raw, _ = model._cluster(z, mask, model.intention_weights(z, mask))
    torch.manual_seed(3)
    past, future = model._aggregate(raw, False), model._aggregate(raw, True)
    torch.manual_seed(3)
    noise = torch.randn(raw.shape) * D ** -0.5
    torch.testing.assert_close(past, model.out_norm(raw + noise))
    assert not torch.allclose(past, future)  # independent draws per side
    # the noise is N(0, 1/D) per component: about unit norm per vector
    assert 0.8 < float((torch.randn(4000, D) * D ** -0.5).norm(dim=1).mean()) < 1.2
    torch.manual_seed(5)
    a = model.loss_terms(inputs, targets, negatives)
    torch.manual_seed(5)
    b = model.loss_terms(inputs, targets, negatives)
    assert a.loss.item() == b.loss.item()  # seeded: reproducible
    a.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # a learned-beta checkpoint does not load into a noise-beta model (and vice versa)
    with pytest.raises(RuntimeError, match="beta_past"):
        model.load_state_dict(make_model().state_dict())


def test_training_steps_are_reproducible():
    def run():
        model = make_model(hidden_dropout=0.2, attention_dropout=0.2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(11)
        for seed in range(3):
            inputs, targets, negatives = make_batch([10, 8, 5, 3, 2, 1], seed=seed)
            loss = model.loss(inputs, targets, negatives)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss, model.state_dict()

    (la, sa), (lb, sb) = run(), run()
    assert la.item() == lb.item()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fully_padded_rows_are_finite():
    model = make_model()
    inputs, targets, negatives = make_batch([0, 4, 0], seed=7)
    terms = model.loss_terms(inputs, targets, negatives)
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model.eval().score(inputs)[:, 1:]).all()
    zeros = torch.zeros(2, MAX_LEN, dtype=torch.long)
    assert model.train().loss(zeros, zeros).item() == 0.0


def test_score_and_recommend():
    model = make_model().eval()
    inputs, *_ = make_batch([10, 5, 0])
    full = model.score(inputs)
    assert full.shape == (3, NUM_ITEMS + 1) and torch.isinf(full[:, 0]).all()
    items = torch.tensor([[3, 0, 7], [1, 2, 3], [5, 5, 9]])
    cand = model.score(inputs, items=items)
    expected = full.gather(1, items).masked_fill(items == 0, float("-inf"))
    torch.testing.assert_close(cand, expected)
    # score = log sum_k exp <phi_k, h_j>
    phi = model.interests(inputs)
    torch.testing.assert_close(full[:, 1:], (phi @ model.embedding.item.weight[1:].t()).logsumexp(1))
    ids, scores = model.recommend([[1, 2, 3], [4]], k=5)
    assert ids.shape == (2, 5) and not set(ids[0].tolist()) & {1, 2, 3} and 4 not in ids[1].tolist()
    assert (scores[:, :-1] >= scores[:, 1:]).all()


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(num_intentions=0), "num_intentions"),
        (dict(tau=0.0), "tau"),
        (dict(seq2seq_weight=-1.0), "seq2seq_weight"),
        (dict(confidence_lambda=0.0), "confidence_lambda"),
        (dict(confidence_lambda=1.5), "confidence_lambda"),
        (dict(loss="bce"), "loss"),
        (dict(beta="zero"), "beta"),
        (dict(hidden_dropout=1.0), "hidden_dropout"),
        (dict(seq2seq_temperature=float("nan")), "seq2seq_temperature"),
        (dict(num_layers=True), "num_layers"),
    ],
)
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        DSSConfig(num_items=5, **fields)


def test_bad_inputs_raise():
    model = make_model(loss="sampled")
    inputs, targets, _ = make_batch([4, 2])
    with pytest.raises(ValueError, match="negative_ids is required"):
        model.loss(inputs, targets)
    with pytest.raises(ValueError, match="target_ids must have shape"):
        model.loss(inputs, targets[:, 1:])
    with pytest.raises(ValueError, match="split must lie"):
        make_model().loss_terms(inputs, targets, split=torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="must be a DSSConfig"):
        DSS(object())
    with pytest.raises(ValueError, match="items must be"):
        model.score(inputs, items=torch.ones(3, 2, dtype=torch.long))


def test_build_model_and_score_compiles():
    model = build_model("dss", num_items=20, hidden_size=8, num_intentions=2, backend="reference")
    assert isinstance(model, DSS) and model.backend == "reference"
    with pytest.raises(ValueError, match=r"unknown DSSConfig field"):
        build_model("dss", num_items=3, num_attention_heads=2)
    with pytest.raises(ValueError, match=r"DSSConfig.num_heads must be 1 \(DSS is a single-head encoder\), got 2"):
        build_model("dss", num_items=3, num_heads=2)  # the encoder is single-head
    model = make_model().eval()
    inputs, *_ = make_batch([10, 4, 0])
    lengths = (inputs != 0).sum(1)
    compiled = torch.compile(model.score, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(inputs, lengths), model.score(inputs))


@pytest.mark.slow  # minutes on 2 loaded cores; `make test-fast` leaves it out
def test_short_training_beats_popularity_on_synthetic():
    from seqrec.eval.baselines import popularity_baseline

    ds = synthetic(num_users=500, num_items=150, seed=0)
    split = ds.leave_one_out(max_len=20)
    torch.manual_seed(0)
    model = build_model("dss", num_items=ds.num_items, max_len=20, hidden_size=32, num_layers=1,
                        hidden_dropout=0.2, attention_dropout=0.2, seq2seq_weight=0.1)
    trainer = Trainer(model, split, TrainConfig(epochs=8, batch_size=64, lr=3e-3, patience=0, seed=0,
                                                progress=False))
    result = trainer.fit()
    pop = popularity_baseline(split)["metrics"]["rank_topk"]
    assert result.test_full["NDCG@10"] > 4.0 * pop["NDCG@10"], (result.test_full, pop)
    assert all(h["loss"] > 0 for h in result.history)


TINY = ["--data", "synthetic", "--synthetic-users", "200", "--synthetic-items", "100", "--hidden-size", "16",
        "--num-layers", "1", "--max-len", "15", "--batch-size", "64", "--patience", "0", "--sampled-negatives", "20",
        "--epochs", "1", "--progress"]


def test_cli_smoke(tmp_path, capsys):
    args = ["train", "--model", "dss", *TINY, "--no-progress", "--num-intentions", "3", "--seq2seq-weight", "0.5",
            "--temperature", "0.2", "--confidence-lambda", "0.8", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr()

    def model_config(run: str) -> dict:  # the run folder's config.json holds every model setting
        return json.loads((tmp_path / run / "config.json").read_text())["model"]["config"]

    config = model_config("run")
    assert "test, full ranking" in out.out and config["num_intentions"] == 3
    assert config["seq2seq_weight"] == 0.5 and config["tau"] == 0.2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run")]) == 0
    assert main(["train", "--model", "dss", *TINY, "--no-progress", "--preset", "seq2item-only",
                 "--loss", "sampled", "--num-negatives", "5", "--out", str(tmp_path / "s2i")]) == 0
    assert model_config("s2i")["seq2seq_weight"] == 0.0
    assert main(["train", "--model", "dss", *TINY, "--no-progress", "--beta", "noise",
                 "--out", str(tmp_path / "noise")]) == 0
    assert model_config("noise")["beta"] == "noise"
    assert main(["train", "--model", "dss", *TINY, "--num-heads", "2"]) == 2
    assert "single-head" in capsys.readouterr().err
    assert main(["train", "--model", "dss", *TINY, "--preset", "nope"]) == 2
    err = capsys.readouterr().err  # names the preset and the ones there are
    assert "'nope'" in err and "seq2item-only" in err


# ---------------------------------------------------------------- intent recovery (eval)


def test_intention_recovery_scores_a_perfect_and_an_untrained_model():
    from seqrec.eval.dss_intents import intention_recovery

    ds = synthetic(num_users=60, num_items=40, num_intents=4, seed=1)
    item_intent = torch.as_tensor(ds.metadata["item_intent"])  # by dense id, -1 for padding

    class Oracle(torch.nn.Module):  # assigns every position to its item's planted intent
        config = DSSConfig(num_items=40, max_len=8, num_intentions=4)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, ids):
            probs = F.one_hot(item_intent[ids].clamp_min(0), 4).float() * (ids != 0).unsqueeze(-1)
            return type("E", (), {"assignments": probs})

    perfect = intention_recovery(Oracle(), ds)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["purity"] == 1.0 and perfect["used"] == 4
    lengths = torch.as_tensor(ds.lengths)
    assert perfect["positions"] == int(lengths.clamp(max=8).sum())
    model = DSS(DSSConfig(num_items=40, max_len=8, hidden_size=8, num_intentions=4, num_layers=1))
    out = intention_recovery(model, ds, batch_size=16)
    assert out["contingency"].shape == (4, 4) and out["positions"] == perfect["positions"]
    assert 0.0 <= out["nmi"] < 0.5
    with pytest.raises(ValueError, match="planted intents"):
        intention_recovery(model, type(ds).from_arrays([0, 0, 0], [1, 2, 3], [1, 2, 3]))
