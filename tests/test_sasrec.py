"""SASRec and the shared Transformer layers (seqrec.models)."""
from __future__ import annotations

import copy
import dataclasses
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from seqrec.models import (
    LengthGroups,
    PackedPositions,
    SASRec,
    SASRecConfig,
    TransformerEncoder,
    build_model,
    lookup_rows,
    padding_mask,
    scaled_dot_attention,
)

NUM_ITEMS = 37
MAX_LEN = 12


def make_model(**overrides) -> SASRec:
    fields = dict(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_size=16, num_heads=2)
    fields.update(overrides)
    return SASRec(SASRecConfig(**fields))


def make_batch(lengths, n=MAX_LEN, num_items=NUM_ITEMS, seed=0):
    """Batch in the data engine's form: left-padded input, next-item targets, negatives."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    full = torch.randint(1, num_items + 1, (len(lengths), n + 1), generator=gen)
    real = torch.arange(n) >= (n - lengths).unsqueeze(1)  # [B, n]
    input_ids = full[:, :-1] * real
    target_ids = full[:, 1:] * real
    negative_ids = torch.randint(1, num_items + 1, (len(lengths), n), generator=gen) * real
    return input_ids, target_ids, negative_ids, lengths


# ---------------------------------------------------------------- attention function


def test_attention_matches_sdpa_and_zeroes_fully_masked_rows():
    torch.manual_seed(0)
    B, H, n, dh = 3, 2, 7, 5
    q, k, v = (torch.randn(B, H, n, dh, dtype=torch.float64, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([7, 3, 0])  # full row, odd length, all padding
    kpm = torch.arange(n) >= (n - lengths).unsqueeze(1)
    out = scaled_dot_attention(q, k, v, causal=True, key_padding_mask=kpm, dropout_p=0.0, training=False)
    assert torch.isfinite(out).all()

    # Queries with at least one visible key: same as PyTorch's SDPA.
    allowed = kpm[:, None, None, :] & torch.ones(n, n, dtype=torch.bool).tril()
    visible = allowed.any(-1)  # [B, 1, n]
    expected = F.scaled_dot_product_attention(q[0:1], k[0:1], v[0:1], is_causal=True)
    torch.testing.assert_close(out[0:1], expected)
    b = 1
    rows = slice(n - 3, n)  # the real positions of the length-3 row
    expected = F.scaled_dot_product_attention(
        q[b : b + 1, :, rows], k[b : b + 1, :, rows], v[b : b + 1, :, rows], is_causal=True
    )
    torch.testing.assert_close(out[b : b + 1, :, rows], expected)

    # Fully masked query rows: exactly 0 output and exactly 0 gradient into q.
    masked_rows = ~visible.expand(B, H, n)
    assert masked_rows.sum() == H * (n - 3) + H * n
    assert (out[masked_rows] == 0).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert (q.grad[masked_rows] == 0).all()
    assert (q.grad[~masked_rows] != 0).any()


def test_attention_bidirectional_and_gradcheck():
    torch.manual_seed(1)
    B, H, n, dh = 2, 1, 4, 3
    q, k, v = (torch.randn(B, H, n, dh, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kpm = torch.tensor([[False, True, True, True], [False, False, False, False]])
    out = scaled_dot_attention(q, k, v, causal=False, key_padding_mask=kpm, dropout_p=0.0, training=True)
    expected = F.scaled_dot_product_attention(q[:1], k[:1], v[:1], attn_mask=kpm[:1, None, None, :])
    torch.testing.assert_close(out[:1], expected)
    assert (out[1] == 0).all()  # no real key at all
    torch.autograd.gradcheck(
        lambda q, k, v: scaled_dot_attention(
            q, k, v, causal=True, key_padding_mask=kpm, dropout_p=0.0, training=False
        ),
        (q, k, v),
    )


def test_attention_rejects_bad_input():
    q = torch.randn(2, 2, 5, 4)
    common = dict(causal=True, dropout_p=0.0, training=False)
    with pytest.raises(ValueError, match="key_padding_mask"):
        scaled_dot_attention(q, q, q, key_padding_mask=torch.ones(2, 5), **common)
    with pytest.raises(ValueError, match=r"\[B, H, n, d\]"):
        scaled_dot_attention(q[0], q[0], q[0], key_padding_mask=None, **common)
    with pytest.raises(ValueError, match="backend"):
        scaled_dot_attention(q, q, q, key_padding_mask=None, backend="cuda", **common)


def test_padding_mask_from_lengths_is_checked():
    input_ids, _, _, lengths = make_batch([5, 1, 0])
    torch.testing.assert_close(padding_mask(input_ids, lengths), input_ids != 0)
    with pytest.raises(ValueError, match="lengths disagree"):
        padding_mask(input_ids, lengths + 1)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, n=12\]"):
        padding_mask(input_ids, torch.tensor([5, 1, 13]))
    with pytest.raises(ValueError, match="lengths must be \\[B\\]"):
        padding_mask(input_ids, lengths[:2])


def test_encoder_causal_override():
    torch.manual_seed(0)
    enc = TransformerEncoder(1, 8, 2, 16, 0.0, 0.0, causal=True).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    x2 = x.clone()
    x2[:, -1] += 1.0
    # Causal: the first position ignores the last; bidirectional: it does not.
    torch.testing.assert_close(enc(x, mask)[:, 0], enc(x2, mask)[:, 0])
    assert not torch.allclose(enc(x, mask, causal=False)[:, 0], enc(x2, mask, causal=False)[:, 0])


# ---------------------------------------------------------------- SASRec model


def test_shapes_and_init():
    model = make_model()
    input_ids, target_ids, negative_ids, lengths = make_batch([12, 5, 1, 0])
    assert model(input_ids).shape == (4, MAX_LEN, 16)
    assert model(input_ids, lengths).shape == (4, MAX_LEN, 16)
    assert model(input_ids[:, -7:]).shape == (4, 7, 16)  # narrower than max_len
    assert model.score(input_ids).shape == (4, NUM_ITEMS + 1)
    assert model.score(input_ids, items=target_ids[:, :3]).shape == (4, 3)
    assert model.loss(input_ids, target_ids, negative_ids).shape == ()
    emb = model.item_embeddings()
    assert emb.shape == (NUM_ITEMS + 1, 16) and not emb.requires_grad
    assert (emb[0] == 0).all()
    assert 0.01 < emb[1:].std().item() < 0.03  # N(0, 0.02)
    block = model.encoder.layers[0]
    assert (block.attention.query.bias == 0).all()
    assert (block.feed_forward.norm.weight == 1).all()
    assert block.feed_forward.dense_in.out_features == 64  # inner_size None -> 4 * hidden
    assert len(model.encoder.layers) == 2


def test_causality():
    model = make_model().eval()
    input_ids, *_ = make_batch([12, 9])
    t = 6
    changed = input_ids.clone()
    changed[:, t] = changed[:, t] % NUM_ITEMS + 1  # a different real item
    out, out_changed = model(input_ids), model(changed)
    torch.testing.assert_close(out[:, :t], out_changed[:, :t], rtol=0, atol=0)
    assert (out[:, t:] - out_changed[:, t:]).abs().amax(-1).min() > 1e-4


def test_left_padding_invariance():
    model = make_model().eval()
    seq = torch.tensor([4, 17, 9, 30, 2])
    short = torch.cat([torch.zeros(2, dtype=torch.long), seq]).unsqueeze(0)  # width 7
    long = torch.cat([torch.zeros(MAX_LEN - 5, dtype=torch.long), seq]).unsqueeze(0)  # width 12
    exact = seq.unsqueeze(0)  # no padding at all
    a = model(short)[:, -1]
    torch.testing.assert_close(a, model(long)[:, -1])
    torch.testing.assert_close(a, model(exact)[:, -1])
    torch.testing.assert_close(model(long, torch.tensor([5]))[:, -1], a)
    # The same row batched with longer rows, scored through score().
    batch = torch.stack([long[0], make_batch([12])[0][0]])
    torch.testing.assert_close(model.score(batch)[0], model.score(short)[0])


def test_fully_padded_row_is_finite():
    model = make_model()
    input_ids, target_ids, negative_ids, _ = make_batch([0, 4])
    out = model(input_ids)
    assert torch.isfinite(out).all()
    assert torch.isfinite(model.score(input_ids)[:, 1:]).all()
    for loss_name in ("bce", "ce"):
        model = make_model(loss=loss_name)
        loss = model.loss(input_ids, target_ids, negative_ids)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # No real target at all: loss 0, not NaN.
    zeros = torch.zeros(2, MAX_LEN, dtype=torch.long)
    assert make_model().loss(zeros, zeros, zeros).item() == 0.0


def test_losses_match_the_authors_formulas():
    torch.manual_seed(0)
    input_ids, target_ids, negative_ids, _ = make_batch([12, 6, 2, 0])
    model = make_model(loss="bce").eval()
    hidden = model(input_ids)
    emb = model.embedding.item.weight
    pos = (hidden * emb[target_ids]).sum(-1)
    neg = (hidden * emb[negative_ids]).sum(-1)
    real = (target_ids > 0).float()
    # FinetuneTrainer.cross_entropy of the S3-Rec authors.
    expected = torch.sum(
        -torch.log(torch.sigmoid(pos) + 1e-24) * real - torch.log(1 - torch.sigmoid(neg) + 1e-24) * real
    ) / real.sum()
    got = model.loss(input_ids, target_ids, negative_ids)
    torch.testing.assert_close(got, expected)
    # Gradients too: the loss looks the item table up once for inputs, targets and
    # negatives (layers.lookup_rows), the formula three times.
    params = list(model.parameters())
    for g_got, g_want, (name, _) in zip(torch.autograd.grad(got, params), torch.autograd.grad(expected, params),
                                        model.named_parameters()):
        torch.testing.assert_close(g_got, g_want, msg=name)

    model_ce = make_model(loss="ce").eval()
    model_ce.load_state_dict(model.state_dict())
    logits = hidden @ emb.t()  # [B, n, V+1]
    logits[..., 0] = float("-inf")
    mask = target_ids > 0
    expected = F.cross_entropy(logits[mask], target_ids[mask])
    torch.testing.assert_close(model_ce.loss(input_ids, target_ids), expected)


@pytest.mark.slow  # minutes on 2 loaded cores; `make test-fast` leaves it out
@pytest.mark.parametrize("loss_name", ["bce", "ce"])
def test_overfits_a_tiny_batch(loss_name):
    torch.manual_seed(0)
    model = make_model(loss=loss_name, hidden_dropout=0.1, attention_dropout=0.1)
    input_ids, target_ids, negative_ids, _ = make_batch([12, 10, 7, 3, 1, 12, 8, 5], seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = model.loss(input_ids, target_ids, negative_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    if loss_name == "ce":
        assert losses[0] == pytest.approx(math.log(NUM_ITEMS), rel=0.05)  # near uniform at init


@pytest.mark.parametrize("skip_padding", [True, False])
def test_score_reads_the_last_column_computed_alone(skip_padding):
    """score() runs the last block on the last column only (``select``); it equals the
    full forward's last column (an empty row gives 0), lengths given or not."""
    model = make_model().eval()
    model.encoder.skip_padding = skip_padding
    input_ids, _, _, lengths = make_batch([12, 5, 0, 1])
    for args in ((input_ids,), (input_ids, lengths), (input_ids[:, -6:],)):
        full = model(*args)[:, -1]
        last = model.encode_last(*args)
        torch.testing.assert_close(last, full)
        assert torch.equal(last[2], torch.zeros(16))
        torch.testing.assert_close(model.score(*args)[:, 1:], (full @ model.embedding.item.weight.t())[:, 1:])
    with pytest.raises(ValueError, match="lengths"):
        model.encode_last(input_ids, lengths + 1)


def test_score_candidates_equal_gather_of_full_scores():
    model = make_model().eval()
    input_ids, *_ = make_batch([12, 5, 0])
    full = model.score(input_ids)
    assert (full[:, 0] == float("-inf")).all()
    candidates = torch.tensor([[3, 1, 37, 0], [5, 5, 2, 9], [0, 1, 2, 3]])
    torch.testing.assert_close(model.score(input_ids, items=candidates), full.gather(1, candidates))
    # Scores are the last position's dot products with the item table.
    torch.testing.assert_close(full[:, 1:], model(input_ids)[:, -1] @ model.item_embeddings()[1:].t())


def test_recommend_excludes_history_and_agrees_with_score():
    model = make_model()
    model.train()
    long_seq = list(range(1, 21))  # 20 items > max_len: only the last 12 are encoded
    sequences = [[3, 8, 8, 21], long_seq, [], [5]]
    ids, scores = model.recommend(sequences, k=10, batch_size=3)
    assert model.training  # mode restored
    assert ids.shape == scores.shape == (4, 10) and ids.dtype == torch.int64
    for row, seq in enumerate(sequences):
        assert not set(ids[row].tolist()) & set(seq)
        assert (ids[row] > 0).all()
        assert (scores[row][:-1] >= scores[row][1:]).all()

    model.eval()
    padded = torch.zeros(4, MAX_LEN, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tail = seq[-MAX_LEN:]
        padded[row, MAX_LEN - len(tail) :] = torch.tensor(tail, dtype=torch.long)
    full = model.score(padded)
    for row, seq in enumerate(sequences):
        full[row, seq] = float("-inf")
    expected_scores, expected_ids = full.topk(10, dim=1)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(ids, expected_ids)

    # Without exclusion the history may come back; the top score is the unmasked max.
    ids_all, scores_all = model.recommend(sequences, k=NUM_ITEMS, exclude_history=False)
    torch.testing.assert_close(scores_all[:, 0], model.score(padded)[:, 1:].amax(1))
    assert set(ids_all[0].tolist()) == set(range(1, NUM_ITEMS + 1))

    # The padded-tensor form gives the same answer (history = the tensor's items).
    tensor_ids, tensor_scores = model.recommend(padded[2:], k=10)
    assert torch.equal(tensor_ids, ids[2:])
    torch.testing.assert_close(tensor_scores, scores[2:])  # other batch width: rounding only

    # Fewer admissible items than k: empty slots are id 0 with score -inf.
    ids_k, scores_k = model.recommend([list(range(1, NUM_ITEMS))], k=3)
    assert ids_k.tolist() == [[NUM_ITEMS, 0, 0]]
    assert scores_k[0, 1:].isneginf().all() and torch.isfinite(scores_k[0, 0])


def test_recommend_rejects_bad_input():
    model = make_model()
    with pytest.raises(ValueError, match=r"sequences\[1\] holds item id 38"):
        model.recommend([[1, 2], [38]])
    with pytest.raises(ValueError, match="0 is padding"):
        model.recommend([[0, 2]])
    with pytest.raises(ValueError, match="k must be"):
        model.recommend([[1]], k=0)
    with pytest.raises(ValueError, match="LEFT-padded"):
        model.recommend(torch.tensor([[1, 2, 0]]))
    with pytest.raises(ValueError, match="list of item ids"):
        model.recommend([[1], 5])


def test_model_input_errors():
    model = make_model()
    input_ids, target_ids, negative_ids, _ = make_batch([4, 2])
    with pytest.raises(ValueError, match="exceeds max_len=12"):
        model(torch.ones(2, MAX_LEN + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="item_seq must be an int64"):
        model(input_ids.float())
    with pytest.raises(ValueError, match="negative_ids is required"):
        model.loss(input_ids, target_ids)
    with pytest.raises(ValueError, match=r"target_ids must have shape \(2, 12\)"):
        model.loss(input_ids, target_ids[:, 1:], negative_ids)
    with pytest.raises(ValueError, match=r"items must be \[B=2, C\]"):
        model.score(input_ids, items=target_ids[0])


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(num_items=0), "num_items must be an int >= 1"),
        (dict(num_items=10.0), "num_items must be an int"),
        (dict(num_items=10, hidden_size=30, num_heads=4), "divisible by num_heads=4"),
        (dict(num_items=10, hidden_dropout=1.0), r"hidden_dropout must be a number in \[0, 1\)"),
        (dict(num_items=10, attention_dropout=-0.1), "attention_dropout"),
        (dict(num_items=10, loss="bpr"), "loss must be one of"),
        (dict(num_items=10, initializer_range=0), "initializer_range must be a positive"),
        (dict(num_items=10, inner_size=0), "inner_size must be an int >= 1"),
        (dict(num_items=10, hidden_act="tanh"), "hidden_act must be one of"),
        (dict(num_items=10, max_len=True), "max_len must be an int"),
    ],
)
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        SASRecConfig(**fields)


def test_config_defaults_are_the_s3rec_authors():
    cfg = SASRecConfig(num_items=5)
    assert (cfg.max_len, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (50, 64, 2, 2)
    assert (cfg.hidden_dropout, cfg.attention_dropout, cfg.initializer_range) == (0.5, 0.5, 0.02)
    assert (cfg.loss, cfg.hidden_act, cfg.ffn_size) == ("bce", "gelu", 256)


def test_pickle_and_state_dict_round_trip():
    model = make_model(loss="ce").eval()
    cfg = pickle.loads(pickle.dumps(model.config))
    assert cfg == model.config and dataclasses.asdict(cfg)["loss"] == "ce"
    buffer = io.BytesIO()
    torch.save({"config": dataclasses.asdict(model.config), "state": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    clone = SASRec(SASRecConfig(**saved["config"])).eval()
    assert not torch.equal(clone.item_embeddings(), model.item_embeddings())  # fresh init
    clone.load_state_dict(saved["state"])
    input_ids, *_ = make_batch([12, 3])
    torch.testing.assert_close(clone(input_ids), model(input_ids), rtol=0, atol=0)
    pickle.loads(pickle.dumps(model))  # whole module pickles too


def test_reference_backend_matches():
    # STYLE habit 11: the fast backend vs a deep copy on the reference backend.
    torch.manual_seed(0)
    config = SASRecConfig(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_size=16)
    model = SASRec(config, backend="seqrec").eval()
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if hasattr(module, "backend"):
            module.backend = "reference"
    input_ids, target_ids, negative_ids, _ = make_batch([12, 5, 0])
    loss = model.loss(input_ids, target_ids, negative_ids)
    loss_ref = reference.loss(input_ids, target_ids, negative_ids)
    torch.testing.assert_close(loss, loss_ref)
    loss.backward()
    loss_ref.backward()
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)
    with pytest.raises(ValueError, match="backend"):
        SASRec(SASRecConfig(num_items=3), backend="triton")


def test_build_model():
    model = build_model("sasrec", num_items=20, hidden_size=8, num_heads=1, backend="reference")
    assert isinstance(model, SASRec) and model.config.hidden_size == 8
    assert model.encoder.layers[0].attention.backend == "reference"
    with pytest.raises(ValueError, match="unknown model 'bert4rec'"):
        build_model("bert4rec", num_items=3)
    with pytest.raises(ValueError, match=r"unknown SASRecConfig field\(s\) \['hidden'\]"):
        build_model("sasrec", num_items=3, hidden=8)
    with pytest.raises(ValueError, match="num_items"):
        build_model("sasrec")


def test_torch_compile_smoke():
    torch.manual_seed(0)
    model = make_model(hidden_dropout=0.0, attention_dropout=0.0)
    input_ids, target_ids, negative_ids, lengths = make_batch([12, 6, 0])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    # Padding positions output 0 on both paths (eager never computes them).
    torch.testing.assert_close(compiled(input_ids, lengths), model(input_ids))
    loss_fn = torch.compile(model.loss, fullgraph=True, backend="aot_eager")
    loss = loss_fn(input_ids, target_ids, negative_ids)
    torch.testing.assert_close(loss, model.loss(input_ids, target_ids, negative_ids))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("skip_padding", [True, False])
def test_encoder_select_returns_the_selected_outputs_and_their_gradients(causal, skip_padding):
    torch.manual_seed(0)
    model = make_model(hidden_dropout=0.0, attention_dropout=0.0).double()
    model.encoder.skip_padding = skip_padding
    input_ids, _, _, _ = make_batch([12, 6, 1, 0, 3])
    real = input_ids != 0
    select = real & (torch.rand(real.shape, generator=torch.Generator().manual_seed(1)) < 0.4)
    select[0, -1] = True
    x = model.embedding(input_ids)
    full = model.encoder(x, real, causal=causal)
    picked = model.encoder(x, real, causal=causal, select=select)
    assert picked.shape == (int(select.sum()), 16)
    torch.testing.assert_close(picked, full[select])
    weights = torch.randn_like(picked)
    grads_full = torch.autograd.grad((full[select] * weights).sum(), list(model.parameters()), allow_unused=True,
                                     retain_graph=True)
    grads_picked = torch.autograd.grad((picked * weights).sum(), list(model.parameters()), allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), grads_full, grads_picked):
        if a is None or b is None:
            assert a is None and b is None, name
        else:
            torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="select marks padding positions"):
        model.encoder(x, real, select=select | ~real)
    with pytest.raises(ValueError, match="select must be a bool tensor of shape"):
        model.encoder(x, real, select=select[:, 1:])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_select", [False, True])
def test_length_groups_give_the_padded_batch_outputs_and_gradients(causal, with_select):
    """The encoder's packed path crops rows to 8/16/32/n columns for attention: every
    group, empty rows, a row with a hole and a right-padded row (span n)."""
    torch.manual_seed(0)
    n = 50
    encoder = TransformerEncoder(2, 16, 2, 32, hidden_dropout=0.0, attention_dropout=0.0).double()
    lengths = torch.tensor([50, 40, 33, 32, 20, 17, 16, 9, 8, 3, 1, 0, 5, 0])
    mask = torch.arange(n) >= (n - lengths).unsqueeze(1)
    mask[12] = False
    mask[12, :5] = True  # right padding: its span is the whole row
    mask[4, 35] = False  # a hole inside a row of span 20
    groups = LengthGroups(mask)
    assert sorted(m.shape[1] for _, _, m in groups.groups) == [8, 16, 32, 50]
    assert sum(m.shape[0] for _, _, m in groups.groups) == 12  # the two empty rows are in none
    x = torch.randn(len(lengths), n, 16, dtype=torch.float64, requires_grad=True)
    select = mask & (torch.rand(mask.shape, generator=torch.Generator().manual_seed(1)) < 0.3) if with_select else None

    def run(skip_padding):
        encoder.skip_padding = skip_padding
        out = encoder(x, mask, causal=causal, select=select)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        grads = torch.autograd.grad((out * weights).sum(), [x, *encoder.parameters()])
        return out, grads

    grouped, grads_grouped = run(True)
    padded, grads_padded = run(False)
    torch.testing.assert_close(grouped, padded)
    for a, b in zip(grads_grouped, grads_padded):
        torch.testing.assert_close(a, b)
    # PackedPositions.attend (one group, the whole row) is the same layout change.
    rows = torch.randn(int(mask.sum()), 4, dtype=torch.float64)
    def attention(t, m): return t.cumsum(1) * m.unsqueeze(-1)  # noqa: E306, E704 (causal, row-local)
    torch.testing.assert_close(groups.attend(attention, rows), PackedPositions(mask).attend(attention, rows))


def test_lookup_rows_is_the_separate_lookups_with_one_table_gradient():
    table = torch.nn.Embedding(9, 4, padding_idx=0).double()
    ids = [torch.tensor([[0, 3, 8], [1, 1, 0]]), torch.tensor([5]), torch.zeros(0, dtype=torch.long),
           torch.tensor([[[2]], [[3]]])]
    together = lookup_rows(table, *ids)
    weights = [torch.randn(*i.shape, 4, dtype=torch.float64) for i in ids]
    separate = [table(i) for i in ids]
    for got, want in zip(together, separate):
        assert got.shape == want.shape
        assert torch.equal(got, want)
    (grad_together,) = torch.autograd.grad(sum((g * w).sum() for g, w in zip(together, weights)), table.weight)
    (grad_separate,) = torch.autograd.grad(sum((s * w).sum() for s, w in zip(separate, weights)), table.weight)
    torch.testing.assert_close(grad_together, grad_separate)
    assert float(grad_together[0].abs().sum()) == 0  # padding_idx kept
    assert lookup_rows(table) == []

    embedding = make_model().embedding.eval()
    input_ids = make_batch([12, 3])[0]
    torch.testing.assert_close(embedding(input_ids, embedding.item(input_ids)), embedding(input_ids))
    with pytest.raises(ValueError, match="item_vectors must be"):
        embedding(input_ids, embedding.item(input_ids[:, 1:]))


def test_skipping_padding_positions_changes_no_real_output():
    torch.manual_seed(0)
    model = make_model(hidden_dropout=0.0, attention_dropout=0.0)
    input_ids, target_ids, negative_ids, _ = make_batch([12, 6, 1, 0])
    packed = model(input_ids)
    loss_packed = model.loss(input_ids, target_ids, negative_ids)
    grads_packed = torch.autograd.grad(loss_packed, list(model.parameters()), allow_unused=True)
    model.encoder.skip_padding = False
    padded = model(input_ids)
    loss_padded = model.loss(input_ids, target_ids, negative_ids)
    grads_padded = torch.autograd.grad(loss_padded, list(model.parameters()), allow_unused=True)
    real = input_ids != 0
    torch.testing.assert_close(packed, padded)
    assert (packed[~real] == 0).all() and (packed[real] != 0).any(-1).all()
    torch.testing.assert_close(loss_packed, loss_padded)
    for a, b in zip(grads_packed, grads_padded):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("causal", [True, False])
def test_packed_embedding_and_encoder_give_the_padded_rows(causal):
    """ItemPositionEmbedding.packed + TransformerEncoder.encode_packed (what S3-Rec's
    pretraining calls) equal the padded forward at the real positions, and ``keep``
    returns the requested rows in its own order (repeats allowed), gradients included."""
    torch.manual_seed(0)
    model = make_model(hidden_dropout=0.0, attention_dropout=0.0).double()
    input_ids, _, _, _ = make_batch([12, 6, 1, 0, 3, 9])
    real = input_ids != 0
    packed = LengthGroups(real)
    embedded = model.embedding.packed(input_ids, packed.index)
    torch.testing.assert_close(embedded, model.embedding(input_ids)[real])
    full = model.encoder(model.embedding(input_ids), real, causal=causal)[real]
    torch.testing.assert_close(model.encoder.encode_packed(embedded, packed, causal=causal), full)
    keep = torch.tensor([5, 0, int(real.sum()) - 1, 5, 2])
    picked = model.encoder.encode_packed(embedded, packed, causal=causal, keep=keep)
    torch.testing.assert_close(picked, full[keep])
    weights = torch.randn_like(picked)
    params = list(model.parameters())
    a = torch.autograd.grad((picked * weights).sum(), params, allow_unused=True)
    b = torch.autograd.grad((full[keep] * weights).sum(), params, allow_unused=True)
    for (name, _), ga, gb in zip(model.named_parameters(), a, b):
        assert (ga is None) == (gb is None), name
        if ga is not None:
            torch.testing.assert_close(ga, gb, msg=name)
    with pytest.raises(ValueError, match="item_vectors must be \\[N, D\\]"):
        model.embedding.packed(input_ids, packed.index, embedded[:-1])
