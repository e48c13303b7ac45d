"""Composition as a first-class API (issue 29 item 1): one encoder whose side information,
interests, attention direction and weighted objectives come from its config.

The composed model configured as SASRec, DIF-SR or DSS equals that model (same weights,
same loss, terms and gradients); combinations no single model expresses train, and their
total is the weighted sum of the logged terms; a weight of 0 leaves a term (and the
gradient of its parameters) out; any pretraining initialises its encoder completely; the
CLI, evaluation and saving work for it."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import seqrec
from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import ComposedConfig, ComposedRecommender, build_model, load_pretrained
from seqrec.models.difsr import attribute_config
from seqrec.models.pretrained import encoder_tensor_names
from test_init_transfer import LAYERS, _pretrained
from test_init_transfer import D as INIT_D
from test_init_transfer import MAX_LEN as INIT_MAX_LEN

MAX_LEN = 12
ENC = dict(max_len=MAX_LEN, hidden_size=16, num_layers=2, hidden_dropout=0.0, attention_dropout=0.0)
FIELDS = ["category", "brand"]


@pytest.fixture(scope="module")
def ds():
    return synthetic(num_users=40, num_items=30, num_intents=3, seed=0)


def _batch(ds, num_negatives=1, seed=0):
    split = ds.leave_one_out(max_len=MAX_LEN)
    return next(iter(split.train_batches(16, seed=seed, epoch=0, num_negatives=num_negatives)))


def _side(ds):
    return dict(attribute_sizes=8, inner_size=64, **attribute_config(ds, FIELDS))


# (name, the paper's model and its config, the composed config that expresses it,
#  negatives per position)
CASES = {
    "sasrec-ce": ("sasrec", dict(loss="ce", num_heads=2), dict(loss="ce", num_heads=2), 1),
    "sasrec-bce": ("sasrec", dict(loss="bce", num_heads=2), dict(loss="bce", num_heads=2), 1),
    "sasrec-sampled": ("sasrec", dict(loss="sampled", num_heads=2), dict(loss="sampled", num_heads=2), 4),
    "difsr-gate": ("difsr", dict(loss="ce", num_heads=2, fusion="gate", attribute_loss_weight=2.5),
                   dict(loss="ce", num_heads=2, fusion="gate", side_information="difsr", attribute_loss_weight=2.5),
                   1),
    "difsr-concat-bce": ("difsr", dict(loss="bce", num_heads=2, fusion="concat", attribute_loss_weight=(1.0, 0.5)),
                         dict(loss="bce", num_heads=2, fusion="concat", side_information="difsr",
                              attribute_loss_weight=(1.0, 0.5)), 1),
    "dss": ("dss", dict(num_heads=1, num_intentions=3, seq2seq_weight=0.5),
            dict(num_heads=1, interests="dss", num_intentions=3, seq2seq_weight=0.5), 1),
    "dss-sampled": ("dss", dict(num_heads=1, num_intentions=2, seq2seq_weight=0.2, loss="sampled"),
                    dict(num_heads=1, interests="dss", num_intentions=2, seq2seq_weight=0.2, loss="sampled"), 4),
}


def _grads(model) -> dict:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", sorted(CASES))
def test_composed_equals_the_papers_model(case, ds):
    name, own, composed, negatives = CASES[case]
    side = _side(ds) if name == "difsr" else {}
    torch.manual_seed(0)
    old = build_model(name, num_items=ds.num_items, attributes=ds, **ENC, **side, **own)
    torch.manual_seed(1)  # other initial weights: the state dict must carry everything
    new = build_model("composed", num_items=ds.num_items, attributes=ds, **ENC, **side, **composed)
    assert type(new) is ComposedRecommender
    # The same parameter names, so the state dict loads strictly both ways.
    assert set(new.state_dict()) == set(old.state_dict())
    new.load_state_dict(old.state_dict())
    batch = _batch(ds, negatives)
    options = {}
    if name == "dss":  # DSS draws its split point: fixed, so both see the same one
        options["split"] = old.sample_split(batch.lengths)
    a, b = old.loss_terms(batch, **options), new.loss_terms(batch, **options)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-6)
    for term, value in a.terms.items():  # every term the paper's model logs, by the same name
        torch.testing.assert_close(b.terms[term], value, rtol=1e-6, atol=1e-6, msg=term)
    if name == "sasrec":
        assert set(b.terms) == {"item"}
    a.loss.backward()
    b.loss.backward()
    ga, gb = _grads(old), _grads(new)
    assert set(ga) == set(gb) and ga
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-5, atol=1e-6, msg=n)
    # and the same scores
    old.eval(), new.eval()
    h = batch.input_ids
    torch.testing.assert_close(new.score(h), old.score(h), rtol=1e-6, atol=1e-5)


def _combined(ds, **fields):
    base = dict(side_information="difsr", interests="dss", num_heads=2, num_intentions=3,
                attribute_loss_weight=(2.0, 0.5), seq2seq_weight=0.3, next_item_weight=0.7)
    torch.manual_seed(0)
    return build_model("composed", num_items=ds.num_items, attributes=ds, **ENC, **_side(ds), **{**base, **fields})


def test_side_information_intentions_and_every_term_combine_and_train(ds):
    """DIF-SR's fusion under DSS's intentions on a two-head encoder (neither paper's model
    can: DSS is single-head and has no side information), with the attribute and seq2seq
    terms: the total is the weighted sum of the logged terms and every part trains."""
    model = _combined(ds)
    assert [o.name for o in model.objectives] == ["seq2item", "attr:category", "attr:brand", "seq2seq"]
    batch = _batch(ds)
    torch.manual_seed(5)
    out = model.loss_terms(batch)
    weights = {"seq2item": 0.7, "attr:category": 2.0, "attr:brand": 0.5, "seq2seq": 0.3}
    assert set(weights) <= set(out.terms) and {"pairs", "present"} <= set(out.terms)
    expected = sum(w * out.terms[name] for name, w in weights.items())
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=0)
    assert all(torch.isfinite(out.terms[n]) and out.terms[n] > 0 for n in weights)
    out.loss.backward()
    grads = _grads(model)
    for part in ("prototypes", "beta_future", "predictors.0.weight", "predictors.1.weight",
                 "encoder.layers.0.attention.fusion_params.0", "encoder.layers.0.attention.attribute_query.1.weight",
                 "embedding.attributes.1.weight", "encoder.layers.1.feed_forward.dense_in.weight"):
        assert part in grads and grads[part].abs().sum() > 0, part
    # a few steps on one batch lower the total
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    split = model.sample_split(batch.lengths)
    first = model.loss_terms(batch, split=split).loss.item()
    for _ in range(15):
        optimizer.zero_grad()
        model.loss_terms(batch, split=split).loss.backward()
        optimizer.step()
    assert model.loss_terms(batch, split=split).loss.item() < first


@pytest.mark.parametrize("dropped, gone, silent", [
    (dict(attribute_loss_weight=0.0), ["attr:category", "attr:brand"], ["predictors."]),
    (dict(attribute_loss_weight=(0.0, 1.0)), ["attr:category"], ["predictors.0."]),
    (dict(seq2seq_weight=0.0), ["seq2seq", "pairs", "present"], ["beta_future"]),
    (dict(next_item_weight=0.0), ["seq2item"], []),
])
def test_a_weight_of_0_drops_its_term(ds, dropped, gone, silent):
    model = _combined(ds, **dropped)
    batch = _batch(ds)
    torch.manual_seed(5)
    out = model.loss_terms(batch)
    assert not set(gone) & set(out.terms)
    weights = {o.name: o.weight for o in model.objectives}
    torch.testing.assert_close(out.loss, sum(w * out.terms[n] for n, w in weights.items()), rtol=1e-6, atol=0)
    out.loss.backward()
    for name, p in model.named_parameters():  # the dropped term's own parameters get no gradient
        if any(name.startswith(s) for s in silent):
            assert p.grad is None, name
    # the same batch and split with the term: the kept terms are unchanged
    full = _combined(ds)
    full.load_state_dict(model.state_dict())
    torch.manual_seed(5)
    kept = full.loss_terms(batch)
    for name in out.terms:
        if name not in ("pairs", "present"):
            torch.testing.assert_close(out.terms[name], kept.terms[name], msg=name)


@pytest.mark.parametrize("side", [False, True])
def test_bidirectional_attention_trains_the_last_position_only(ds, side):
    torch.manual_seed(0)
    model = build_model("composed", num_items=ds.num_items, **ENC, num_heads=2, attention="bidirectional",
                        attributes=ds, **(dict(side_information="difsr", **_side(ds)) if side else {}))
    assert not model.encoder.causal
    batch = _batch(ds)
    out = model.loss_terms(batch)
    # by hand: the full bidirectional states, the last column's targets only
    hidden = model(batch.input_ids, batch.lengths)[:, -1]
    target = batch.target_ids[:, -1]
    logp = torch.log_softmax(hidden @ model.embedding.item.weight[1:].t(), -1)
    real = target > 0
    expected = -logp[real].gather(1, (target[real] - 1)[:, None]).mean()
    torch.testing.assert_close(out.terms["item"], expected, rtol=1e-5, atol=1e-6)
    # a later item changes an earlier position's state (it would not under causal attention)
    seq = batch.input_ids[:1].clone()
    states = model.eval()(seq)
    seq[0, -1] = seq[0, -1] % ds.num_items + 1
    assert not torch.allclose(model(seq)[0, -2], states[0, -2])


@pytest.mark.parametrize("fields, message", [
    (dict(side_information="difsr"), "ComposedConfig.attribute_fields must be at least one attribute field"),
    (dict(attribute_fields=("category",), attribute_vocab_sizes=(3,)), "must be empty without side information"),
    (dict(attribute_loss_weight=1.0), "attribute_loss_weight must be 0 without side information"),
    (dict(seq2seq_weight=0.1), "seq2seq_weight must be 0 without intentions"),
    (dict(seq2seq_weight=-0.1), "ComposedConfig.seq2seq_weight must be a number >= 0"),
    (dict(interests="dss", loss="bce"), "'ce' or 'sampled' with interests='dss'"),
    (dict(interests="dss", attention="bidirectional"), "'causal' with interests='dss'"),
    (dict(next_item_weight=0.0), "next_item_weight must be > 0 when every other objective's weight is 0"),
    (dict(side_information="film"), "ComposedConfig.side_information must be one of ('none', 'difsr')"),
])
def test_bad_compositions_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ComposedConfig(num_items=10, **fields)


# ---------------------------------------------------------------------- --init
@pytest.mark.parametrize("pretraining", ["s3rec", "dss"])
@pytest.mark.parametrize("parts", [dict(), dict(side_information="difsr", interests="dss", num_intentions=3),
                                   dict(side_information="difsr", interests="sine", num_prototypes=5, num_interests=2)])
def test_any_pretraining_initialises_the_composed_encoder_completely(pretraining, parts):
    ds = synthetic(num_users=30, num_items=25, num_intents=3, seed=0)
    source = _pretrained(pretraining, ds)
    torch.manual_seed(0)
    side = dict(attribute_sizes=4, **attribute_config(ds, ["category"])) if parts else {}
    model = build_model("composed", num_items=ds.num_items, max_len=INIT_MAX_LEN, hidden_size=INIT_D,
                        num_layers=LAYERS, num_heads=2 if pretraining == "s3rec" else 1, attributes=ds,
                        **side, **parts)
    encoder = encoder_tensor_names(model)
    assert len(encoder) == 4 + 16 * LAYERS
    report = load_pretrained(model, source)  # strict: refuses a partial encoder transfer
    assert report.encoder_complete and set(encoder) <= set(report.loaded)
    state = model.state_dict()
    for name in report.loaded:
        want = source[name][: state[name].size(0)] if name.endswith("item.weight") else source[name]
        assert torch.equal(state[name], want), name
    if pretraining == "dss" and parts.get("interests") == "dss":  # DSS's intention head is the composed one's
        assert {"prototypes", "beta_past", "beta_future", "key_map.weight", "out_norm.weight"} <= set(report.loaded)
    if parts.get("interests") == "sine":  # SINE's head is the model's own: left at its initialisation, said so
        head = {"concept_key.weight", "intent_query", "assign_proj.weight", "next_norm.bias"}
        assert head <= set(report.own) and not head & set(report.loaded)
        if pretraining == "dss":  # DSS's K = 3 prototypes are no concept pool of L = 5
            assert report.mismatched == {"prototypes": "shape (5, 8) here, (3, 8) in the checkpoint"}


# ---------------------------------------------------------------------- CLI
TINY = ["--data", "synthetic", "--synthetic-users", "120", "--synthetic-items", "60", "--hidden-size", "16",
        "--num-layers", "1", "--max-len", "12", "--batch-size", "64", "--patience", "0", "--sampled-negatives", "10",
        "--no-progress"]


def test_cli_trains_a_composition_and_evaluate_reproduces_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "composed", *TINY, "--epochs", "2", "--side-information", "difsr", "--attributes",
            "category", "brand", "--attribute-size", "8", "--interests", "dss", "--num-intentions", "3",
            "--attribute-weight", "2", "--seq2seq-weight", "0.1", "--num-heads", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["test_full"]["NDCG@20"] > 0
    spec = json.loads((out / "config.json").read_text())["model"]
    assert spec["name"] == "composed"
    assert {k: spec["config"][k] for k in ("side_information", "interests", "attribute_fields", "seq2seq_weight")} \
        == {"side_information": "difsr", "interests": "dss", "attribute_fields": ["category", "brand"],
            "seq2seq_weight": 0.1}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2
    weights = {"seq2item": 1.0, "attr:category": 2.0, "attr:brand": 2.0, "seq2seq": 0.1}
    for record in history:
        terms = record["loss_terms"]
        assert set(weights) <= set(terms)
        assert record["loss"] == pytest.approx(sum(w * terms[n] for n, w in weights.items()), rel=1e-5)
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    tables = capsys.readouterr().out
    assert tables.split("\n", 1)[1].strip() == printed.split("\n", 1)[1].strip()


@pytest.mark.parametrize("extra, message", [
    (["--side-information", "difsr"], "ComposedConfig.attribute_fields must be at least one attribute field "
                                      "with side_information='difsr' (seqrec train: --attributes FIELD ...)"),
    (["--side-information", "difsr", "--attributes", "colour"], "has no attribute field 'colour'"),
    (["--seq2seq-weight", "-1", "--interests", "dss"], "ComposedConfig.seq2seq_weight must be a number >= 0"),
    (["--attribute-weight", "1"], "--attribute-weight is read only with --side-information difsr"),
    (["--interests", "dss", "--loss", "bce"], "'ce' or 'sampled' with interests='dss'"),
    (["--no-attribute-predictor"], "--no-attribute-predictor is an option of --model difsr, not of --model composed"),
])
def test_cli_refuses_a_bad_composition(extra, message, tmp_path, capsys):
    assert main(["train", "--model", "composed", *TINY, "--epochs", "1", *extra, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "result.json").exists()


def test_unread_fields_are_the_parts_left_off():
    parts = ComposedConfig.PART_FIELDS
    names = {f.name for f in dataclasses.fields(ComposedConfig)}
    assert all(set(fields) <= names for fields in parts.values())
    everything = dict(side_information="difsr", aap_weight=1, mip_weight=1, map_weight=1, sp_weight=1)
    assert set(ComposedConfig.unread_fields({**everything, "interests": "dss"})) == set(parts["sine"])
    assert set(ComposedConfig.unread_fields({**everything, "interests": "sine"})) == set(parts["dss"])
    assert set(ComposedConfig.unread_fields({})) == {n for fields in parts.values() for n in fields}
    only_mip = ComposedConfig.unread_fields({"interests": "sine", "mip_weight": 0.2})
    assert only_mip["aap_input"] == "--aap-weight > 0" and "mask_prob" not in only_mip


@pytest.mark.parametrize("extra, field, value", [
    (["--seq2seq-weight", "0"], "seq2seq_weight", 0.0),  # a weight of 0 says off, as the part is
    (["--interests", "dss", "--num-intentions", "3"], "num_intentions", 3),
    (["--mip-weight", "0.5", "--mask-p", "0.3"], "mask_prob", 0.3),
    # a preset's fields of a part that a flag switches off stay (issue 29's ablation rows)
    (["--preset", "best", "--interests", "none", "--side-information", "none"], "num_intentions", 4),
])
def test_cli_takes_a_part_flag_with_its_part(extra, field, value, monkeypatch, tmp_path):
    import seqrec.train

    class Built(Exception):
        pass

    def stand_in(model, data, config, *, model_spec=None, **options):
        raise Built(model_spec["config"])
    monkeypatch.setattr(seqrec.train, "Trainer", stand_in)
    with pytest.raises(Built) as built:
        main(["train", "--model", "composed", *TINY, *extra, "--out", str(tmp_path / "r")])
    assert built.value.args[0][field] == value


def test_cli_init_from_a_dss_pretraining(tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", "--model", "dss", *TINY[:8], "--epochs", "1", "--no-progress", "--num-intentions", "2",
                 "--out", str(pre)]) == 0
    out = tmp_path / "ft"
    assert main(["train", "--model", "composed", *TINY, "--epochs", "1", "--init", str(pre), "--interests", "dss",
                 "--side-information", "difsr", "--attributes", "category", "--attribute-size", "4",
                 "--out", str(out)]) == 0
    assert "loaded 33 tensors (20 of the 20 encoder tensors)" in capsys.readouterr().err
    spec = json.loads((out / "config.json").read_text())["model"]
    assert spec["name"] == "composed" and spec["config"]["num_heads"] == 1  # the checkpoint's sizes
    init = spec["init"]
    assert set(init["encoder"]) <= set(init["loaded"]) and len(init["encoder"]) == 4 + 16
    assert {"prototypes", "beta_future"} <= set(init["loaded"]) and not init["mismatched"]
    assert json.loads((out / "result.json").read_text())["test_full"]["NDCG@20"] > 0


# ---------------------------------------------------------------------- saving, scoring
@pytest.mark.parametrize("parts", [dict(), dict(side_information="difsr", interests="dss", num_intentions=2,
                                               attribute_loss_weight=1.0, seq2seq_weight=0.1)])
def test_save_pretrained_round_trip_score_and_recommend(parts, ds, tmp_path):
    side = dict(attribute_sizes=4, **attribute_config(ds, ["category"])) if parts else {}
    torch.manual_seed(0)
    model = build_model("composed", num_items=ds.num_items, attributes=ds, **ENC, num_heads=2, **side, **parts)
    with torch.no_grad():  # spread-out weights: top-k must not hinge on near ties
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.eval()
    vocab = [f"i{k}" for k in range(1, ds.num_items + 1)]
    folder = model.save_pretrained(tmp_path / "m", vocab=vocab)
    loaded = seqrec.from_pretrained(folder)
    assert type(loaded) is ComposedRecommender and loaded.config == model.config
    assert loaded.uses_side_information == bool(parts) and loaded.has_interests == bool(parts)
    h = _batch(ds).input_ids
    torch.testing.assert_close(loaded.score(h), model.score(h), rtol=0, atol=0)
    ids, scores = model.recommend(h, 5)
    assert torch.equal(loaded.recommend(h, 5)[0], ids) and ids.shape == (h.size(0), 5)
    # scores rank by score(): the top-1 is the best admissible item
    full = model.score(h).scatter(1, h, float("-inf"))
    assert torch.equal(ids[:, 0], full.argmax(1))
    emb = model.user_embedding(h)
    assert emb.shape == ((h.size(0), 2, ENC["hidden_size"]) if parts else (h.size(0), ENC["hidden_size"]))
    items, _ = loaded.recommend_raw([["i1", "i2", "i3"]], k=3)
    assert len(items[0]) == 3 and not {"i1", "i2", "i3"} & set(items[0])


def test_readme_example(ds):
    """The README's Python example of "Compose your own model", run as written on the
    synthetic data (whose attribute field is 'category', Beauty's 'attributes')."""
    from test_trainer_extensions import _readme_block

    code = _readme_block("Compose your own model").replace('["attributes"]', '["category"]')
    scope = {"ds": ds, "batch": _batch(ds)}
    exec(compile(code, "README.md", "exec"), scope)
    model, out = scope["model"], scope["out"]
    assert [o.name for o in model.objectives] == ["seq2item", "attr:category", "seq2seq"]
    total = sum(o.weight * out.terms[o.name] for o in model.objectives)
    torch.testing.assert_close(out.loss, total, rtol=1e-6, atol=0)


def resumes_exactly(tmp_path, **parts) -> list[dict]:
    """Train a small composed model with ``parts`` 3 epochs twice from one seed, and once
    killed after epoch 1 and resumed from another initialisation: the runs must repeat,
    and the resumed one must end with the uninterrupted run's losses, test metrics and
    weights (tests/test_resume_models.py's check). Returns the history."""
    from seqrec.train import Trainer
    from test_resume_models import Killed, _config, _same_weights

    data = synthetic(num_users=48, num_items=40, num_intents=3, seed=11)
    fields = dict(num_items=data.num_items, max_len=12, hidden_size=8, num_layers=1, num_heads=2,
                  attribute_sizes=4, **attribute_config(data, ["category"]), **parts)
    config = _config(epochs=3, patience=0)

    def trainer(out, seed):
        torch.manual_seed(seed)
        return Trainer(build_model("composed", attributes=data, **fields), data.leave_one_out(max_len=12), config,
                       out_dir=out)

    full = trainer(tmp_path / "full", 0)
    full_result = full.fit()
    again = trainer(tmp_path / "again", 0).fit()
    assert [r["loss_terms"] for r in again.history] == [r["loss_terms"] for r in full_result.history]
    killed = trainer(tmp_path / "killed", 0)

    def kill(record):
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        killed.fit(on_epoch=kill)
    resumed = trainer(tmp_path / "killed", 99)  # another init: everything comes from the checkpoint
    assert resumed.resume() and resumed.epoch == 1
    result = resumed.fit()
    assert [r["loss"] for r in result.history] == [r["loss"] for r in full_result.history]
    assert result.test_full == full_result.test_full
    _same_weights(resumed, full)
    return full_result.history


def test_kill_and_resume_gives_the_same_weights(tmp_path):
    """The composed model (DIF-SR's tables, DSS's split points drawn from torch's RNG)
    resumes bit for bit, as the papers' models do (tests/test_resume_models.py)."""
    history = resumes_exactly(tmp_path, side_information="difsr", interests="dss", num_intentions=2,
                              attribute_loss_weight=1.0, seq2seq_weight=0.2)
    assert {"seq2item", "attr:category", "seq2seq"} <= set(history[0]["loss_terms"])


def test_an_objective_of_your_own_adds_a_term(ds):
    """A term is a name, a weight and a function of the encoded batch: add one in Python."""
    from seqrec.models import LossOutput, Objective
    from seqrec.models.composed import config_objectives

    config = ComposedConfig(num_items=ds.num_items, **ENC, num_heads=2)

    def state_norm(model, encoded):  # mean squared norm of the rows' user vectors
        return LossOutput(encoded.hidden.pow(2).sum(-1).mean())

    torch.manual_seed(0)
    plain = ComposedRecommender(config)
    torch.manual_seed(0)
    model = ComposedRecommender(config, objectives=(*config_objectives(config), Objective("norm", 0.25, state_norm)))
    batch = _batch(ds)
    out, base = model.loss_terms(batch), plain.loss_terms(batch)
    hidden = model(batch.input_ids, batch.lengths)[batch.target_ids > 0]
    torch.testing.assert_close(out.terms["norm"], hidden.pow(2).sum(-1).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, base.loss + 0.25 * out.terms["norm"], rtol=1e-6, atol=1e-6)
    for bad, message in [((), "one or more terms"), ((Objective("a", 0.0, state_norm),), "weight must be a finite"),
                         ((Objective("a", 1.0, state_norm), Objective("a", 1.0, state_norm)), "distinct names"),
                         (("item",), r"objectives\[0\] must be an Objective")]:
        with pytest.raises(ValueError, match=message):
            ComposedRecommender(config, objectives=bad)


def test_the_parts_fields_are_the_papers_models_fields():
    """The composed config declares DIF-SR's and DSS's fields with their own checks, help and
    flags (config.field_of), so one flag serves both models."""
    import dataclasses

    from seqrec.models.config import field_of
    from seqrec.models.difsr import DIFSRConfig
    from seqrec.models.dss import DSSConfig

    mine = {f.name: f for f in dataclasses.fields(ComposedConfig)}
    for cls, names in ((DIFSRConfig, ("attribute_sizes", "fusion", "pooling", "attribute_loss_weight")),
                       (DSSConfig, ("num_intentions", "tau", "seq2seq_weight", "beta"))):
        theirs = {f.name: f for f in dataclasses.fields(cls)}
        for name in names:
            a, b = mine[name].metadata["seqrec"], theirs[name].metadata["seqrec"]
            assert a == b, name
    # only the defaults differ where the composition starts with the term off
    assert (mine["attribute_loss_weight"].default, mine["seq2seq_weight"].default) == (0.0, 0.0)
    with pytest.raises(ValueError, match="DSSConfig has no field 'nope' declared with spec"):
        field_of(DSSConfig, "nope")
    with pytest.raises(ValueError, match=r"unknown spec keyword\(s\) \['colour'\]"):
        field_of(DSSConfig, "tau", colour=1)
    # DIF-SR's checks, named for the composed config
    with pytest.raises(ValueError, match=r"ComposedConfig.attribute_sizes of field 'a' \(=3\) must be divisible"):
        ComposedConfig(num_items=5, side_information="difsr", attribute_fields=("a",), attribute_vocab_sizes=(2,),
                       attribute_sizes=3)
