"""SINE (seqrec.models.sine): config, shapes, padding, the loss against a direct
formula, gradients, backends, merge rules, recommend, training on synthetic data, CLI."""
from __future__ import annotations

import copy
import io
import pickle
from contextlib import redirect_stdout

import pytest
import torch
import torch.nn.functional as F

from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.eval.interests import interest_cosine
from seqrec.models import SINE, SINEConfig, build_model
from seqrec.models.sine import SINE_PRESETS, covariance_regularizer
from seqrec.train import TrainConfig, Trainer

NUM_ITEMS = 41
MAX_LEN = 9


def make_model(**overrides) -> SINE:
    fields = dict(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_size=12, num_prototypes=10, num_interests=3)
    fields.update(overrides)
    torch.manual_seed(0)
    model = SINE(SINEConfig(**fields))
    # Larger weights than the 0.02 init so that every path carries visible signal.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.embedding.item.weight[0].zero_()
    return model


def make_batch(lengths, n=MAX_LEN, m=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    full = torch.randint(1, NUM_ITEMS + 1, (len(lengths), n + 1), generator=gen)
    real = torch.arange(n) >= (n - lengths).unsqueeze(1)
    inputs = full[:, :-1] * real
    targets = full[:, 1:] * real
    negatives = torch.randint(1, NUM_ITEMS + 1, (len(lengths), n, m), generator=gen) * real.unsqueeze(-1)
    return inputs, targets, negatives, lengths


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(num_items=0), r"num_items must be an int >= 1"),
        (dict(num_prototypes=3, num_interests=4), r"num_interests=4 must be <= num_prototypes=3"),
        (dict(num_interests=0), r"num_interests must be an int >= 1"),
        (dict(temperature=0.0), r"temperature must be a positive number"),
        (dict(assign_temperature=-1.0), r"assign_temperature must be a positive number"),
        (dict(reg_weight=-0.1), r"reg_weight must be a number >= 0"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
        (dict(max_prefixes=0), r"max_prefixes must be an int >= 1 or None"),
        (dict(merge="mean"), r"merge must be one of \('aggregate', 'max'\)"),
        (dict(intent_attention="x"), r"intent_attention must be one of \('paper', 'assigned'\)"),
        (dict(hidden_size=2.5), r"hidden_size must be an int >= 1"),
    ],
)
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        SINEConfig(**{"num_items": 10, **fields})


def test_defaults_are_the_papers_and_presets_build():
    cfg = SINEConfig(num_items=10)
    assert (cfg.num_prototypes, cfg.num_interests, cfg.temperature, cfg.reg_weight) == (500, 4, 0.1, 0.1)
    for name, preset in SINE_PRESETS.items():
        assert isinstance(build_model("sine", num_items=100, **preset.model), SINE), name
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# ---------------------------------------------------------------- forward


def test_shapes_and_probabilities():
    model = make_model().eval()
    inputs, _, _, lengths = make_batch([9, 4, 1, 6])
    out = model.encode(inputs, lengths)
    B, n, K, D = 4, MAX_LEN, 3, 12
    assert out.user.shape == (B, D) and out.interests.shape == (B, K, D)
    assert out.interest_weights.shape == (B, K) and out.concepts.shape == (B, K)
    assert out.assignment.shape == (B, n, K) and out.position_weights.shape == (B, K, n)
    assert torch.equal(model.interests(inputs, lengths), out.interests)
    torch.testing.assert_close(model(inputs, lengths), out.user)
    mask = inputs != 0
    torch.testing.assert_close(out.assignment.sum(-1), mask.float())
    torch.testing.assert_close(out.position_weights.sum(-1), torch.ones(B, K))
    assert torch.all(out.position_weights[~mask.unsqueeze(1).expand(B, K, n)] == 0)
    torch.testing.assert_close(out.interest_weights.sum(-1), torch.ones(B))
    # Activated concepts: distinct, the top-K of C z_u, best first; scale = sigmoid(score).
    assert all(len(set(row.tolist())) == K for row in out.concepts)
    torch.testing.assert_close(out.user, (out.interest_weights.unsqueeze(-1) * out.interests).sum(1))


def encode_by_the_equations(model, seq):
    """SINE's equations for ONE unpadded sequence [n], written out in plain PyTorch."""
    cfg = model.config
    n, d, k = len(seq), cfg.hidden_size, cfg.num_interests
    X = model.embedding.item(seq)  # [n, D]
    P = model.embedding.position.weight[cfg.max_len - n :]
    a = torch.softmax(model.concept_query(torch.tanh(model.concept_key(X))).squeeze(-1), 0)
    z = a @ X
    s = model.prototypes @ z
    top, idx = s.topk(k)
    Cu = model.prototypes[idx] * torch.sigmoid(top).unsqueeze(-1)  # [K, D]

    def N(u):
        return F.normalize(F.layer_norm(u, (d,), eps=cfg.layer_norm_eps), dim=-1)

    p_kt = torch.softmax(N(model.assign_proj(X)) @ N(Cu).t() / cfg.assign_temperature, dim=1)  # [n, K]
    h = torch.tanh(model.intent_key(X + P)).view(n, k, d)
    logits = (h * model.intent_query).sum(-1).t()  # [K, n]
    if cfg.intent_attention == "assigned":
        logits = logits * p_kt.t()
    p_tk = torch.softmax(logits, dim=1)  # [K, n]
    phi = model.interest_norm((p_kt.t() * p_tk) @ X)  # [K, D]
    xhat = p_kt @ Cu  # [n, D]
    g = torch.softmax(model.next_query(torch.tanh(model.next_key(xhat + P))).squeeze(-1), 0)
    c_apt = model.next_norm(g @ xhat)
    e = torch.softmax(phi @ c_apt / cfg.temperature, 0)
    return e @ phi, phi, idx


@pytest.mark.parametrize("attention", ["paper", "assigned"])
def test_encode_follows_the_equations(attention):
    model = make_model(intent_attention=attention).eval()
    inputs, _, _, lengths = make_batch([9, 4, 6], seed=5)
    out = model.encode(inputs, lengths)
    for b in range(3):
        user, phi, idx = encode_by_the_equations(model, inputs[b, MAX_LEN - int(lengths[b]) :])
        assert torch.equal(out.concepts[b], idx)
        torch.testing.assert_close(out.interests[b], phi, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.user[b], user, atol=1e-5, rtol=1e-4)


def test_interests_are_distinct_and_finite():
    model = make_model().eval()
    inputs, _, _, lengths = make_batch([9, 7, 5, 8], seed=3)
    phi = model.interests(inputs, lengths)
    assert torch.isfinite(phi).all()
    cos = interest_cosine(phi)
    assert cos.shape == (4,)
    assert torch.all(cos < 0.99), cos  # not K copies of one vector
    # The K interests of a row differ from each other pairwise.
    diffs = (phi.unsqueeze(1) - phi.unsqueeze(2)).norm(dim=-1)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.all(diffs[:, off] > 1e-3)


def test_left_padding_and_batch_invariance():
    model = make_model().eval()
    inputs, _, _, lengths = make_batch([9, 3, 5])
    full = model.encode(inputs, lengths)
    # Row 1 alone, trimmed to its real width (positions are right-aligned).
    alone = model.encode(inputs[1:2, -3:])
    torch.testing.assert_close(alone.user, full.user[1:2])
    torch.testing.assert_close(alone.interests, full.interests[1:2])
    assert torch.equal(alone.concepts, full.concepts[1:2])
    torch.testing.assert_close(alone.assignment, full.assignment[1:2, -3:])


def test_fully_padded_row_is_finite():
    model = make_model()
    inputs, targets, negatives, lengths = make_batch([0, 5])
    out = model.encode(inputs, lengths)
    for t in out:
        assert torch.isfinite(t.float()).all()
    assert torch.all(out.assignment[0] == 0)
    scores = model.eval().score(inputs, lengths)
    assert torch.isfinite(scores[:, 1:]).all()
    loss = model.train().loss(inputs, targets, negatives)
    loss.backward()
    assert torch.isfinite(loss)


def test_rejects_bad_input():
    model = make_model()
    inputs, targets, negatives, lengths = make_batch([4, 2])
    with pytest.raises(ValueError, match="item_seq must be an int64"):
        model.encode(inputs.float())
    with pytest.raises(ValueError, match="exceeds max_len=9"):
        model.encode(torch.ones(2, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="lengths disagree with item_seq"):
        model.encode(inputs, lengths + 1)
    with pytest.raises(ValueError, match="needs negative_ids"):
        model.loss(inputs, targets, None)
    with pytest.raises(ValueError, match=r"negative_ids must be \[B, n, m\]"):
        model.loss(inputs, targets, negatives[:, :3])
    with pytest.raises(ValueError, match=r"items must be \[B=2, C\]"):
        model.score(inputs, items=torch.ones(3, 2, dtype=torch.int64))


# ---------------------------------------------------------------- loss


def test_training_prefixes_are_right_aligned_prefixes():
    model = make_model()
    inputs, targets, _, _ = make_batch([5, 0, 2])
    rows, cols, prefixes = model.training_prefixes(inputs, targets)
    assert len(rows) == 5 + 2 and prefixes.shape == (7, 5)
    for r, c, p in zip(rows.tolist(), cols.tolist(), prefixes):
        real = inputs[r, : c + 1]
        real = real[real != 0]
        assert torch.equal(p[p != 0], real) and torch.all(p[: len(p) - len(real)] == 0)
    capped = make_model(max_prefixes=2)
    rows2, cols2, _ = capped.training_prefixes(inputs, targets)
    assert rows2.tolist() == [0, 0, 2, 2] and cols2.tolist() == [7, 8, 7, 8]


def test_loss_matches_direct_formula():
    model = make_model(reg_weight=0.3).eval()  # eval: no dropout anyway (0.0)
    inputs, targets, negatives, lengths = make_batch([4, 2, 3], m=3)
    loss = model.loss(inputs, targets, negatives)
    terms = []
    E = model.embedding.item.weight
    for b in range(3):
        for t in range(MAX_LEN):
            if targets[b, t] == 0:
                continue
            prefix = inputs[b, : t + 1]
            v = model(prefix[prefix != 0].unsqueeze(0))[0]
            neg = negatives[b, t]
            # Accidental hits (a negative equal to the target) are removed (losses.sampled_softmax_loss).
            cand = torch.cat([targets[b, t : t + 1], neg[neg != targets[b, t]]])
            terms.append(-torch.log_softmax(E[cand] @ v, dim=0)[0])
    C = model.prototypes
    Cc = C - C.mean(1, keepdim=True)
    M = Cc @ Cc.t() / C.shape[1]
    reg = 0.5 * ((M**2).sum() - (torch.diagonal(M) ** 2).sum())
    torch.testing.assert_close(loss, torch.stack(terms).mean() + 0.3 * reg)
    # One negative per position arrives as [B, n] from the trainer.
    one = model.loss(inputs, targets, negatives[..., 0])
    torch.testing.assert_close(one, model.loss(inputs, targets, negatives[..., :1]))


def test_covariance_regularizer():
    # Rows of an orthonormal basis of the zero-mean subspace: centred and orthogonal.
    basis = torch.linalg.qr(torch.cat([torch.ones(8, 1), torch.randn(8, 5)], 1).double())[0][:, 1:].t()
    assert covariance_regularizer(basis).abs() < 1e-12
    # Three copies of one prototype: every entry of M is its variance v.
    row = torch.randn(8, dtype=torch.float64)
    v = (row - row.mean()).square().sum() / 8
    torch.testing.assert_close(covariance_regularizer(row.expand(3, 8)), 0.5 * 6 * v**2)
    with pytest.raises(ValueError, match=r"prototypes must be \[L, D\]"):
        covariance_regularizer(torch.randn(3))


@pytest.mark.parametrize("attention", ["paper", "assigned"])
def test_gradient_reaches_every_parameter(attention):
    model = make_model(intent_attention=attention)
    inputs, targets, negatives, _ = make_batch([9, 5, 3, 7])
    model.loss(inputs, targets, negatives).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("attention", ["paper", "assigned"])
def test_reference_backend_matches(attention):
    model = make_model(intent_attention=attention)
    ref = copy.deepcopy(model)
    ref.backend = "reference"
    inputs, targets, negatives, _ = make_batch([9, 5, 0, 7])
    l1 = model.loss(inputs, targets, negatives)
    l2 = ref.loss(inputs, targets, negatives)
    torch.testing.assert_close(l1, l2)
    l1.backward()
    l2.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_compile_smoke():
    model = make_model().eval()
    inputs, _, _, _ = make_batch([9, 5, 2])
    compiled = torch.compile(model.encode, fullgraph=True, backend="aot_eager")
    out, expected = compiled(inputs), model.encode(inputs)
    torch.testing.assert_close(out.user, expected.user)
    torch.testing.assert_close(out.interests, expected.interests)


# ---------------------------------------------------------------- scoring / merge


@pytest.mark.parametrize("merge", ["aggregate", "max"])
def test_score_follows_the_merge_rule(merge):
    model = make_model(merge=merge).eval()
    inputs, _, _, lengths = make_batch([9, 4, 6])
    out = model.encode(inputs, lengths)
    E = model.embedding.item.weight
    expected = out.user @ E.t() if merge == "aggregate" else (out.interests @ E.t()).amax(1)
    scores = model.score(inputs, lengths)
    assert torch.all(scores[:, 0] == float("-inf"))
    torch.testing.assert_close(scores[:, 1:], expected[:, 1:])
    items = torch.tensor([[3, 0, 7], [1, 2, 41], [5, 5, 9]])
    cand = model.score(inputs, lengths, items=items)
    torch.testing.assert_close(cand[items != 0], scores.gather(1, items)[items != 0])
    assert torch.all(cand[items == 0] == float("-inf"))


def test_max_merge_recommend_equals_merged_per_interest_retrievals():
    model = make_model(merge="max").eval()
    seqs = [[1, 2, 3, 4], [5], [7, 7, 8, 9, 10, 11]]
    k = 6
    ids, scores = model.recommend(seqs, k=k)
    E = model.embedding.item.weight.detach()
    for row, seq in enumerate(seqs):
        phi = model.interests(torch.tensor([seq]))[0]  # [K, D]
        pool = {}
        for vec in phi:  # K separate retrievals, history excluded, then merged by score
            s = E @ vec
            s[0] = float("-inf")
            s[torch.tensor(seq)] = float("-inf")
            top = s.topk(k)
            for i, v in zip(top.indices.tolist(), top.values.tolist()):
                pool[i] = max(pool.get(i, float("-inf")), v)
        merged = sorted(pool.items(), key=lambda kv: -kv[1])[:k]
        assert ids[row].tolist() == [i for i, _ in merged]
        torch.testing.assert_close(scores[row], torch.tensor([v for _, v in merged]))


def test_recommend_excludes_history_and_agrees_with_score():
    model = make_model()
    seqs = [[3, 4, 5], [9], list(range(1, 12))]
    ids, scores = model.recommend(seqs, k=5, batch_size=2)
    assert model.training  # mode restored
    for row, seq in enumerate(seqs):
        assert not set(ids[row].tolist()) & set(seq)
    model.eval()
    padded = torch.zeros(3, MAX_LEN, dtype=torch.int64)
    padded[0, -3:] = torch.tensor(seqs[0])
    full = model.score(padded[:1])[0]
    full[[0, 3, 4, 5]] = float("-inf")
    assert ids[0].tolist() == full.topk(5).indices.tolist()
    ids_all, _ = model.recommend(seqs, k=NUM_ITEMS)
    assert torch.all(ids_all[2, -11:] == 0)  # fewer admissible items than k
    with pytest.raises(ValueError, match="k must be an int"):
        model.recommend(seqs, k=0)
    with pytest.raises(ValueError, match="outside"):
        model.recommend([[0, 1]], k=2)


# ---------------------------------------------------------------- training and CLI


@pytest.mark.slow  # minutes on 2 loaded cores; `make test-fast` leaves it out
def test_trained_sine_beats_popularity_on_synthetic():
    from seqrec.eval.baselines import popularity_baseline

    ds = synthetic(num_users=400, num_items=150, seed=1)
    split = ds.leave_one_out(max_len=20)
    torch.manual_seed(0)
    model = build_model("sine", num_items=ds.num_items, max_len=20, hidden_size=32, num_prototypes=40)
    trainer = Trainer(model, split, TrainConfig(epochs=4, batch_size=64, lr=3e-3, patience=0, seed=0,
                                                num_negatives=20))
    result = trainer.fit()
    pop = popularity_baseline(split)["metrics"]["rank_topk"]
    assert result.test_full["NDCG@10"] > 2 * pop["NDCG@10"]
    assert result.test_full["HR@10"] > pop["HR@10"] + 0.1


def test_cli_train_and_evaluate(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "sine", "--preset", "small", "--num-interests", "2", "--num-prototypes", "12",
            "--intent-attention", "assigned",
            "--reg-weight", "0.5", "--temperature", "0.2", "--merge", "max", "--num-negatives", "5",
            "--data", "synthetic", "--synthetic-users", "150", "--synthetic-items", "80", "--hidden-size", "8",
            "--max-len", "12", "--batch-size", "64", "--epochs", "1", "--sampled-negatives", "10", "--out", str(out)]
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(args) == 0
    text = buf.getvalue()
    assert "test, full ranking" in text and "NDCG@20" in text
    import json

    saved = json.loads((out / "result.json").read_text())
    cfg = saved["model"]["config"]
    assert (cfg["num_interests"], cfg["num_prototypes"], cfg["reg_weight"], cfg["temperature"], cfg["merge"]) == (
        2, 12, 0.5, 0.2, "max")
    assert saved["train"]["num_negatives"] == 5 and cfg["intent_attention"] == "assigned"
    buf2 = io.StringIO()
    with redirect_stdout(buf2):
        assert main(["evaluate", "--checkpoint", str(out)]) == 0
    # evaluate first says which weights it scores, then prints the same tables
    assert buf2.getvalue().split("\n", 1)[1].strip() == text.split("\n", 1)[1].strip()
    # both print how distinct the K interests are (mean pairwise cosine, in [-1, 1])
    line = [ln for ln in text.splitlines() if ln.startswith("interests (test inputs, 150 users)")]
    assert len(line) == 1, text
    cosine = float(line[0].split("K interests ")[1].split()[0])
    assert -1.0 <= cosine <= 1.0
    assert main(["train", "--model", "sine", "--preset", "nope", "--synthetic-users", "50", "--epochs", "1"]) == 2
    with pytest.raises(SystemExit, match="2"):  # refused while parsing, naming the option
        main(["train", "--model", "sine", "--num-negatives", "0", "--epochs", "1"])
