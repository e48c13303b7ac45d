"""DIF-SR: config validation, shapes, causality / padding invariance, losses against a
direct formula, attribute pooling, gradient flow, backends, compile, recommend, a short
training against the popularity baseline, and the CLI."""
from __future__ import annotations

import copy
import io
import pickle
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqrec.cli import main
from seqrec.data import SequenceDataset, synthetic
from seqrec.models import DIFSR, DIFSRConfig, build_model
from seqrec.models.difsr import PRESETS, attribute_config

FUSIONS = ["sum", "concat", "gate"]
MAX_LEN = 12


def tiny_dataset() -> SequenceDataset:
    """9 items; field 'tags' multi-valued (0-3 values), 'genre' single-valued, 'price' numeric."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), 10)
    items = rng.integers(1, 10, size=users.size)
    tags = {i: [f"t{(i * k) % 5}" for k in range(i % 4)] for i in range(1, 10)}
    genre = {i: f"g{i % 3}" for i in range(1, 10)}
    price = {i: float(i) / 4 for i in range(1, 10) if i != 5}  # item 5: unknown price
    return SequenceDataset.from_arrays(users, items, item_attributes={"tags": tags, "genre": genre,
                                                                         "price": price}, name="tiny")


def make_model(ds=None, fields=("tags", "genre"), backend=None, **over) -> DIFSR:
    ds = ds or tiny_dataset()
    cfg = dict(num_items=ds.num_items, max_len=MAX_LEN, hidden_size=16, num_heads=2, num_layers=2, inner_size=24,
               attribute_sizes=(4, 6)[: len(fields)] if len(fields) <= 2 else 4, hidden_dropout=0.0,
               attention_dropout=0.0, **attribute_config(ds, fields))
    cfg.update(over)
    torch.manual_seed(0)
    return DIFSR(DIFSRConfig(**cfg), backend=backend, attributes=ds)


def batch(lengths, n=MAX_LEN, num_items=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    full = torch.randint(1, num_items + 1, (len(lengths), n + 1), generator=gen)
    real = (torch.arange(n + 1) >= (n + 1 - torch.tensor(lengths) - 1)[:, None]).long()
    full = full * real
    inputs, targets = full[:, :-1], full[:, 1:] * (full[:, :-1] > 0)
    negatives = torch.randint(1, num_items + 1, inputs.shape, generator=gen) * (targets > 0)
    return inputs, targets, negatives


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("over, match", [
    (dict(num_items=0), "num_items must be an int >= 1"),
    (dict(num_heads=3), "hidden_size must be divisible by num_heads=3, got 16"),
    (dict(attribute_sizes=5), "attribute_sizes of field 'tags' \\(=5\\) must be divisible by num_heads=2"),
    (dict(attribute_sizes=(4, 4, 4)), "attribute_sizes needs one value per attribute field \\(2\\)"),
    (dict(attribute_vocab_sizes=(3,)), "attribute_vocab_sizes needs one entry per attribute field"),
    (dict(attribute_fields=("tags", "tags")), "attribute_fields has duplicates"),
    (dict(attribute_fields="tags"), "attribute_fields must be a sequence of field names"),
    (dict(fusion="max"), "fusion must be one of"),
    (dict(pooling="first"), "pooling must be one of"),
    (dict(loss="bpr"), "loss must be one of"),
    (dict(attention_dropout=1.0), "attention_dropout must be a number in \\[0, 1\\)"),
    (dict(attribute_loss_weight=-1.0), "attribute_loss_weight must be a finite number >= 0"),
    (dict(attribute_loss_weight=(1.0,)), "attribute_loss_weight needs one value per attribute field"),
    (dict(position_scores=1), "position_scores must be a bool"),
])
def test_config_validation(over, match):
    base = dict(num_items=9, hidden_size=16, num_heads=2, attribute_fields=("tags", "genre"),
                attribute_vocab_sizes=(5, 3), attribute_sizes=4)
    with pytest.raises(ValueError, match=match):
        DIFSRConfig(**{**base, **over})


def test_config_defaults_and_preset_are_the_papers():
    cfg = DIFSRConfig(num_items=5)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.inner_size) == (256, 4, 8, 256)
    assert (cfg.attribute_sizes, cfg.hidden_dropout, cfg.attention_dropout) == (64, 0.5, 0.3)
    assert (cfg.fusion, cfg.attribute_loss_weight, cfg.loss, cfg.pooling) == ("gate", 10.0, "ce", "sum")
    p = DIFSRConfig.from_preset("difsr-beauty", num_items=5, attribute_fields=["a"], attribute_vocab_sizes=[7])
    assert p.attribute_fields == ("a",) and p.field_sizes == (64,) and p.num_sources == 3
    assert PRESETS["difsr-beauty"].train["lr"] == 1e-4
    with pytest.raises(ValueError, match="unknown DIF-SR preset"):
        DIFSRConfig.from_preset("nope", num_items=5)
    # lists (a JSON round trip) become tuples; the config pickles
    c = DIFSRConfig(num_items=5, attribute_fields=["a", "b"], attribute_vocab_sizes=[2, 0], attribute_sizes=[8, 16])
    assert c.attribute_sizes == (8, 16) and pickle.loads(pickle.dumps(c)) == c


# ---------------------------------------------------------------- forward
def test_shapes_scores_and_state_dict():
    model = make_model().eval()
    x, _, _ = batch([12, 5, 1, 0])
    h = model(x)
    assert h.shape == (4, MAX_LEN, 16) and torch.isfinite(h).all()
    assert torch.equal(h[3], torch.zeros_like(h[3]))  # all-padding row
    s = model.score(x)
    assert s.shape == (4, 10) and torch.isinf(s[:, 0]).all()
    cand = torch.tensor([[1, 2, 0], [3, 4, 5], [9, 8, 7], [1, 1, 1]])
    torch.testing.assert_close(model.score(x, items=cand)[cand > 0], s.gather(1, cand)[cand > 0])
    ids, scores = model.recommend([[1, 2, 3], [4]], k=3)
    assert ids.shape == (2, 3) and not set(ids[0].tolist()) & {1, 2, 3}
    # the attribute tables are in the state dict: a model built without them reproduces the outputs
    assert {"_attr_0", "_attr_1"} <= set(model.state_dict())
    other = DIFSR(model.config)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.eval()(x), h)


def _without_tables(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("_attr")}


def test_a_saved_model_is_self_contained():
    """Issue 24 item 3 / 28 item 5: the side tables are persistent buffers, so a checkpoint
    alone (weights_only load, no dataset) recommends for new sequences."""
    model = make_model(fields=("tags", "price")).eval()
    state = model.state_dict()
    assert {"_attr_0", "_attr_1", "_attr_present_1"} <= set(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = DIFSR(model.config)  # no dataset
    assert not fresh.has_attribute_tables
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.has_attribute_tables
    seqs = [[1, 2, 3], [5, 4], [9]]
    want_ids, want_scores = model.recommend(seqs, k=4)
    ids, scores = fresh.recommend(seqs, k=4)
    assert torch.equal(ids, want_ids) and torch.equal(scores, want_scores)


def test_old_checkpoints_without_tables_still_load():
    model = make_model(fields=("tags", "price")).eval()
    x, _, _ = batch([12, 5, 1])
    old = _without_tables(model.state_dict())  # what checkpoints held before the tables were saved
    built = make_model(fields=("tags", "price"))  # built from the dataset: keeps its own tables
    built.load_state_dict(old)  # strict
    torch.testing.assert_close(built.eval()(x), model(x))
    bare = DIFSR(model.config)
    bare.load_state_dict(old)  # loads; the tables are still missing, and said so when used
    with pytest.raises(RuntimeError, match="no item -> attribute tables"):
        bare(x)
    bad = model.state_dict()
    bad["_attr_0"] = bad["_attr_0"] + 100
    with pytest.raises(ValueError, match="'_attr_0': attribute ids outside \\[0, 5\\] of field 'tags'"):
        DIFSR(model.config).load_state_dict(bad)
    bad["_attr_0"] = model.state_dict()["_attr_0"][:3]
    with pytest.raises(ValueError, match="'_attr_0' must be a \\[num_items \\+ 1 = 10, m\\] int64 table"):
        DIFSR(model.config).load_state_dict(bad)


def test_attach_dataset_is_a_deprecated_alias():
    model = make_model()
    bare = DIFSR(model.config)
    with pytest.warns(DeprecationWarning, match="attributes=dataset"):
        bare.attach_dataset(tiny_dataset())
    bare.load_state_dict(_without_tables(model.state_dict()))
    x, _, _ = batch([12, 5, 1])
    torch.testing.assert_close(bare.eval()(x), model.eval()(x))


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("sees_masked", [False, True])
def test_length_groups_equal_one_batch_padded_to_max_len(monkeypatch, fusion, sees_masked):
    """Rows are encoded in groups by span cropped on the left (widths 8/16/32/max_len),
    the fusion maps cut to the group's key columns. Outputs and every gradient of the
    loss equal one batch padded to max_len (the torch.compile path)."""
    model = make_model(fusion=fusion, max_len=40, fusion_sees_masked=sees_masked).double().eval()
    x, t, neg = batch([40, 33, 17, 16, 9, 8, 3, 1, 0], n=40)
    odd = x.clone()  # rows that are not left-padded keep their whole span
    odd[2, 30] = 0  # a hole
    odd[8, :5] = torch.arange(1, 6)  # right padding
    for inputs in (x, x[:, -20:], odd):  # full width, narrower than some group widths, odd rows
        padded = model._encode_padded(inputs, inputs != 0)
        torch.testing.assert_close(model(inputs), padded, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.encode_last(inputs), padded[:, -1], rtol=1e-10, atol=1e-12)
    params = [p for _, p in model.named_parameters()]
    grouped = torch.autograd.grad(model.loss(x, t, neg), params, allow_unused=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    plain = torch.autograd.grad(model.loss(x, t, neg), params, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), grouped, plain):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_loss_rejects_targets_at_padding():
    model = make_model()
    x, t, neg = batch([5, 3])
    t[1, 0] = 4  # row 1's first column is padding
    with pytest.raises(ValueError, match="targets at padding positions"):
        model.loss(x, t, neg)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_score_reads_the_last_column_computed_alone(fusion):
    """score() runs the last block on the last column only; it equals the full forward's
    last column (an empty row gives 0), for full-width and narrower batches."""
    model = make_model(fusion=fusion).eval()
    x, _, _ = batch([12, 5, 1, 0, 7])
    weight = model.embedding.item.weight
    for inputs in (x, x[:, -7:]):
        full = model(inputs)[:, -1]
        last = model.encode_last(inputs)
        torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-6)
        assert torch.equal(last[3], torch.zeros(16))
        want = (full @ weight.t())[:, 1:]
        torch.testing.assert_close(model.score(inputs)[:, 1:], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_causality_and_left_padding_invariance(fusion):
    model = make_model(fusion=fusion).eval()
    x, _, _ = batch([9, 9])
    h = model(x)
    y = x.clone()
    y[:, -3:] = torch.tensor([7, 8, 9])  # change the last three items
    torch.testing.assert_close(model(y)[:, :-3], h[:, :-3], rtol=1e-5, atol=1e-6)
    # the same sequence in a narrower batch (less left padding) or next to a longer one
    torch.testing.assert_close(model(x[:, -9:]), h[:, -9:], rtol=1e-5, atol=1e-6)
    wide, _, _ = batch([12], seed=3)
    both = torch.cat([x, wide])
    torch.testing.assert_close(model(both)[:2, -9:], h[:, -9:], rtol=1e-5, atol=1e-6)


def test_attributes_and_positions_change_the_scores():
    ds = tiny_dataset()
    model = make_model(ds).eval()
    x, _, _ = batch([8, 6])
    h = model(x)
    no_attr = make_model(ds, fields=())
    no_attr.load_state_dict({k: v for k, v in model.state_dict().items()
                             if "attribute" not in k and "predictors" not in k and "fusion" not in k}, strict=False)
    assert not torch.allclose(no_attr.eval()(x), h)
    # position information enters only through the position scores: without them the
    # last state of a one-layer model is invariant to the order of the earlier items
    # (sum fusion: the gate / concat maps weigh score columns by position themselves;
    # init std 0.5: at 0.02 position scores and values barely move the output)
    kw = dict(num_layers=1, initializer_range=0.5, fusion="sum")
    model = make_model(ds, **kw).eval()
    no_pos = make_model(ds, position_scores=False, **kw).eval()
    a = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]])
    b = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 3, 1, 4, 2, 5]])
    torch.testing.assert_close(no_pos(a)[:, -1], no_pos(b)[:, -1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(a)[:, -1], model(b)[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["sum", "mean", "max"])
def test_multi_valued_attribute_pooling(pooling):
    ds = tiny_dataset()
    model = make_model(ds, fields=("tags", "price"), pooling=pooling, attribute_sizes=4)
    items = torch.arange(10)
    tags, price = model._field_embeddings(items)
    tag_field, price_field = ds.attributes["tags"], ds.attributes["price"]
    emb = model.embedding.attributes[0].weight
    w = model.embedding.attributes[1].weight
    for i in range(10):
        vals = tag_field.values[tag_field.indptr[i]:tag_field.indptr[i + 1]]
        vecs = emb[torch.as_tensor(vals, dtype=torch.long)]
        expected = torch.zeros(4) if len(vals) == 0 else {
            "sum": vecs.sum(0), "mean": vecs.mean(0), "max": vecs.max(0).values}[pooling]
        torch.testing.assert_close(tags[i], expected)
        p = price_field.values[price_field.indptr[i]:price_field.indptr[i + 1]]
        torch.testing.assert_close(price[i], float(p[0]) * w if len(p) else torch.zeros(4))
    assert (tag_field.counts() > 1).any() and (tag_field.counts() == 0).any()


def test_attach_errors():
    ds = tiny_dataset()
    cfg = DIFSRConfig(num_items=ds.num_items, hidden_size=16, num_heads=2, attribute_sizes=4,
                      **attribute_config(ds, ["tags"]))
    model = DIFSR(cfg)
    with pytest.raises(RuntimeError, match="no item -> attribute tables: build it with DIFSR\\(config, attributes="):
        model(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="has no attribute field 'colour'; available"):
        attribute_config(ds, ["colour"])
    with pytest.raises(ValueError, match="has 5 values, the model was built with attribute_vocab_sizes\\[0\\]=7"):
        DIFSR(DIFSRConfig(**{**cfg.__dict__, "attribute_vocab_sizes": (7,)}), attributes=ds)
    with pytest.raises(ValueError, match="'tags' is categorical, the model was built for a numeric one"):
        DIFSR(DIFSRConfig(**{**cfg.__dict__, "attribute_vocab_sizes": (0,)}), attributes=ds)
    with pytest.raises(ValueError, match="sequence width 13 exceeds max_len=12"):
        make_model()(torch.ones(1, 13, dtype=torch.long))


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_loss_matches_direct_formula(loss):
    ds = tiny_dataset()
    model = make_model(ds, fields=("tags", "genre", "price"), loss=loss, attribute_loss_weight=(2.0, 0.5, 3.0))
    x, t, neg = batch([10, 4, 0, 7])
    total = model.loss(x, t, neg)
    h = model(x)
    item_w = model.embedding.item.weight
    per_pos, attr = [], {"tags": [], "genre": []}
    for b in range(x.size(0)):
        for pos in range(x.size(1)):
            if t[b, pos] == 0:
                continue
            r = h[b, pos]
            if loss == "ce":
                logits = item_w[1:] @ r
                per_pos.append(-torch.log_softmax(logits, 0)[t[b, pos] - 1])
            else:
                per_pos.append(-F.logsigmoid(r @ item_w[t[b, pos]]) - F.logsigmoid(-(r @ item_w[neg[b, pos]])))
            for i, name in enumerate(("tags", "genre")):
                field = ds.attributes[name]
                item = int(t[b, pos])
                labels = torch.zeros(field.num_values)
                labels[torch.as_tensor(field.values[field.indptr[item]:field.indptr[item + 1]]) - 1] = 1.0
                logit = model.predictors[i](r)
                attr[name].append(F.binary_cross_entropy_with_logits(logit, labels))
    expected = torch.stack(per_pos).mean() + 2.0 * torch.stack(attr["tags"]).mean() + \
        0.5 * torch.stack(attr["genre"]).mean()  # the numeric field has no predictor
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    terms = model.loss_terms(x, t, neg)
    assert set(terms.terms) == {"item", "attr:tags", "attr:genre"}
    torch.testing.assert_close(terms.loss, total)
    no_pred = make_model(ds, fields=("tags", "genre", "price"), loss=loss, attribute_predictor=False)
    no_pred.load_state_dict(model.state_dict(), strict=False)
    assert set(no_pred.loss_terms(x, t, neg).terms) == {"item"}
    # no real target: 0, not NaN
    zero = model.loss(x, torch.zeros_like(t), torch.zeros_like(neg))
    assert float(zero.detach()) == 0.0
    if loss == "bce":
        with pytest.raises(ValueError, match="negative_ids is required"):
            model.loss(x, t)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_gradient_reaches_every_parameter(fusion):
    model = make_model(fusion=fusion, hidden_dropout=0.1, attention_dropout=0.1).train()
    x, t, neg = batch([12, 7, 3])
    model.loss(x, t, neg).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("fusion_params.3"):  # gate b2: the same for every source, cancels in the softmax
            assert p.grad.abs().max() < 1e-5, name
        else:
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", FUSIONS)
def test_reference_backend_matches(fusion):
    model = make_model(fusion=fusion, backend="seqrec").eval()
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if hasattr(module, "backend"):
            module.backend = "reference"
    x, t, neg = batch([12, 5, 2, 0])
    a, b = model.loss(x, t, neg), ref.loss(x, t, neg)
    torch.testing.assert_close(a, b)
    a.backward()
    b.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torch_compile_smoke():
    model = make_model(fusion="gate").eval()
    x, _, _ = batch([12, 6])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- training and CLI


def test_short_training_beats_popularity(one_thread):
    from seqrec.eval.baselines import popularity_baseline
    from seqrec.train import TrainConfig, Trainer

    ds = synthetic(num_users=500, num_items=150, seed=0)
    split = ds.leave_one_out(max_len=20)
    model = build_model("difsr", num_items=ds.num_items, max_len=20, hidden_size=32, num_heads=2, num_layers=1,
                        inner_size=32, attribute_sizes=8, hidden_dropout=0.2, attention_dropout=0.1,
                        attribute_loss_weight=1.0, attributes=ds, **attribute_config(ds, ["category", "brand"]))
    torch.manual_seed(0)
    result = Trainer(model, split, TrainConfig(epochs=8, batch_size=64, lr=3e-3, patience=0, seed=0,
                                               sampled_negatives=20)).fit()
    pop = popularity_baseline(split)["metrics"]["rank_topk"]
    assert result.test_full["NDCG@10"] > 1.5 * pop["NDCG@10"], (result.test_full, pop)
    assert result.test_full["HR@10"] > pop["HR@10"] + 0.05


def test_cli_train_and_evaluate(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "difsr", "--data", "synthetic", "--synthetic-users", "200", "--synthetic-items",
            "120", "--attributes", "category", "brand", "--attribute-size", "4", "8", "--hidden-size", "16",
            "--num-heads", "2", "--num-layers", "1", "--inner-size", "16", "--max-len", "15", "--epochs", "1",
            "--batch-size", "64", "--sampled-negatives", "20", "--fusion", "concat", "--attribute-weight", "3",
            "--out", str(out)]
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(args) == 0
    text = buf.getvalue()
    assert "test, full ranking" in text
    buf2 = io.StringIO()
    with redirect_stdout(buf2):
        assert main(["evaluate", "--checkpoint", str(out)]) == 0
    # evaluate first says which weights it scores, then prints the same tables
    assert buf2.getvalue().split("\n", 1)[1].strip() == text.split("\n", 1)[1].strip()
    # the preset fills the paper's settings; explicit options still win
    buf3 = io.StringIO()
    with redirect_stdout(buf3):
        assert main(["train", "--model", "difsr", "--preset", "difsr-beauty", "--data", "synthetic",
                     "--synthetic-users", "100", "--synthetic-items", "120", "--attributes", "category",
                     "--hidden-size", "16", "--num-heads", "2", "--num-layers", "1", "--attribute-size", "8",
                     "--max-len", "10", "--epochs", "1", "--sampled-negatives", "20"]) == 0


def test_cli_errors(capsys):
    common = ["--data", "synthetic", "--synthetic-users", "100", "--epochs", "1"]
    assert main(["train", "--model", "difsr", "--attributes", "colour", *common]) == 2
    assert "has no attribute field 'colour'; available: ['brand', 'category']" in capsys.readouterr().err
    assert main(["train", "--model", "sasrec", "--preset", "difsr-beauty", *common]) == 2
    assert "preset 'difsr-beauty' is for --model difsr" in capsys.readouterr().err
    assert main(["train", "--model", "sasrec", "--fusion", "gate", *common]) == 2
    assert "--fusion is an option of --model composed/difsr, not of --model sasrec" in capsys.readouterr().err
