"""SINE's sparse interests as a part of ``--model composed`` (issue 29 item 1).

SINE is :class:`~seqrec.models.sine.SparseInterestHead` on its item embeddings; the composed
model is the same head on its encoder's (causal) states, trained on the prefix of the
states that ends at each target, as SINE trains on the prefix of its items. A composed
model whose states are SINE's item embeddings (its host hook ``states``, overridden below)
loads a SINE state dict and gives SINE's loss, terms, gradients and scores; with its
Transformer encoder, the head reads the encoder's states of each prefix, causally."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import seqrec
from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import ComposedConfig, ComposedRecommender, build_model
from seqrec.models.difsr import attribute_config
from seqrec.models.sine import SINEConfig, covariance_regularizer
from seqrec.models.losses import NEGATIVE_LOG_Q
from test_composed import TINY

MAX_LEN = 12
ENC = dict(max_len=MAX_LEN, hidden_size=16, num_layers=2, num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
HEAD = dict(num_prototypes=10, num_interests=3)
FIELDS = ["category", "brand"]

# SINE's parameter names (saved SINE checkpoints load by them): pinned.
SINE_NAMES = [
    "prototypes", "intent_query", "embedding.item.weight", "embedding.position.weight", "concept_key.weight",
    "concept_key.bias", "concept_query.weight", "assign_proj.weight", "intent_key.weight", "intent_key.bias",
    "interest_norm.weight", "interest_norm.bias", "next_key.weight", "next_key.bias", "next_query.weight",
    "next_norm.weight", "next_norm.bias",
]


@pytest.fixture(scope="module")
def ds():
    return synthetic(num_users=40, num_items=30, num_intents=3, seed=0)


def _batch(ds, num_negatives=4, seed=0):
    split = ds.leave_one_out(max_len=MAX_LEN)
    return next(iter(split.train_batches(16, seed=seed, epoch=0, num_negatives=num_negatives)))


class OnItemEmbeddings(ComposedRecommender):
    """The composed model with SINE's inputs as its states: the item embeddings (0 at
    padding), no position and no encoder (``states`` is the head's host hook)."""

    def states(self, item_seq, mask):
        return self.embedding.item(item_seq)


def _grads(model) -> dict:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("own", [
    dict(),
    dict(intent_attention="assigned", merge="max", max_prefixes=2, temperature=0.5, assign_temperature=0.2),
])
@pytest.mark.parametrize("log_q", [False, True])
def test_the_composed_head_equals_sine(ds, own, log_q):
    torch.manual_seed(0)
    sine = build_model("sine", num_items=ds.num_items, max_len=MAX_LEN, hidden_size=16, reg_weight=0.3,
                       **HEAD, **own)
    assert list(sine.state_dict()) == SINE_NAMES
    config = ComposedConfig(num_items=ds.num_items, **ENC, interests="sine", loss="sampled", reg_weight=0.3,
                            layer_norm_eps=sine.config.layer_norm_eps, **HEAD, **own)
    torch.manual_seed(1)  # other initial weights: the state dict must carry everything
    new = OnItemEmbeddings(config)
    # SINE's tensors are the composed model's by name; the composed adds only its encoder
    missing, unexpected = new.load_state_dict(sine.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(n.startswith(("encoder.", "embedding.norm.")) for n in missing)
    assert set(new.state_dict()) == set(SINE_NAMES) | set(missing)
    batch = _batch(ds)
    if log_q:  # a sampled softmax with the log-Q correction of non-uniform negatives
        gen = torch.Generator().manual_seed(3)
        batch = batch._replace(features={NEGATIVE_LOG_Q: torch.rand(batch.negative_ids.shape,
                                                                                 generator=gen) - 4})
    a, b = sine.loss_terms(batch), new.loss_terms(batch)
    assert set(a.terms) == set(b.terms) == {"item", "covariance"}
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-6)
    for term, value in a.terms.items():
        torch.testing.assert_close(b.terms[term], value, rtol=1e-6, atol=1e-6, msg=term)
    torch.testing.assert_close(a.loss, a.terms["item"] + 0.3 * a.terms["covariance"], rtol=1e-6, atol=0)
    a.loss.backward()
    b.loss.backward()
    ga, gb = _grads(sine), _grads(new)
    assert set(ga) == set(gb) == set(SINE_NAMES)  # the encoder, unused here, gets none
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-5, atol=1e-6, msg=n)
    sine.eval(), new.eval()
    h, lengths = batch.input_ids, batch.lengths
    torch.testing.assert_close(new.score(h, lengths), sine.score(h, lengths), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(new.interests(h), sine.interests(h), rtol=1e-6, atol=1e-6)
    items = torch.randint(0, ds.num_items + 1, (h.size(0), 7), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(new.score(h, items=items), sine.score(h, items=items), rtol=1e-6, atol=1e-5)


def _on_encoder(ds, **fields):
    torch.manual_seed(0)
    return build_model("composed", num_items=ds.num_items, **ENC, interests="sine", **HEAD, **fields)


def test_the_head_reads_each_prefix_of_the_encoders_causal_states(ds):
    """Row r of a training batch is the head on the prefix of the encoder's states (of
    the whole batch, causal) that ends at its target's column, right-aligned as its own
    sequence; the last prefix is the whole input (what scoring reads)."""
    model = _on_encoder(ds, loss="sampled").eval()  # eval: no dropout anywhere
    batch = _batch(ds)
    encoded = model.encode_batch(batch.input_ids, batch.target_ids, batch.negative_ids, lengths=batch.lengths)
    states = model(batch.input_ids, batch.lengths)  # [B, n, D]
    n = states.size(1)
    rows, cols = (batch.target_ids > 0).nonzero(as_tuple=True)
    assert encoded.sine.user.shape == (rows.numel(), 16) and torch.equal(encoded.target, batch.target_ids[rows, cols])
    torch.testing.assert_close(encoded.hidden, states[rows, cols])
    for r in range(rows.numel()):
        b, t = int(rows[r]), int(cols[r])
        first = n - int(batch.lengths[b])
        prefix = states[b, first : t + 1].unsqueeze(0)  # its real positions, right-aligned
        mask = torch.ones(1, prefix.size(1), dtype=torch.bool)
        want = model.sparse_interests(prefix, mask)
        # (batched against one row: float summation order differs)
        torch.testing.assert_close(encoded.sine.user[r], want.user[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(encoded.sine.interests[r], want.interests[0], rtol=1e-4, atol=1e-5)
    last = cols == n - 1
    torch.testing.assert_close(encoded.sine.user[last], model.encode_sine(batch.input_ids)[0][rows[last]],
                               rtol=1e-4, atol=1e-5)
    # causal: a later item changes no earlier prefix
    changed = batch.input_ids.clone()
    changed[:, -1] = changed[:, -1] % ds.num_items + 1
    again = model.encode_batch(changed, batch.target_ids, batch.negative_ids, lengths=batch.lengths)
    before = cols < n - 1
    torch.testing.assert_close(again.sine.user[before], encoded.sine.user[before], rtol=0, atol=0)
    assert not torch.allclose(again.sine.user[~before], encoded.sine.user[~before])


def test_max_prefixes_keeps_the_most_recent_targets(ds):
    model = _on_encoder(ds, max_prefixes=2).eval()
    batch = _batch(ds)
    encoded = model.encode_batch(batch.input_ids, batch.target_ids, lengths=batch.lengths)
    real = batch.target_ids > 0
    kept = real & (real.flip(1).cumsum(1).flip(1) <= 2)
    assert torch.equal(encoded.real, kept) and encoded.count == int(kept.sum()) < int(real.sum())
    assert encoded.sine.user.size(0) == encoded.count


def test_the_padded_and_packed_head_agree(ds):
    """``sparse_interests`` under ``torch.compile`` takes the padded path (SINE's compile
    path): the same numbers as the packed path on the real positions."""
    model = _on_encoder(ds).eval()
    batch = _batch(ds)
    mask = batch.input_ids > 0
    states = model(batch.input_ids, batch.lengths)
    packed = model.sparse_interests(states, mask)
    padded = model._extract_interests(states, mask, None)
    for name, a, b in zip(packed._fields, packed, padded):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def _combined(ds, **fields):
    base = dict(side_information="difsr", attribute_sizes=8, inner_size=64, interests="sine", loss="sampled",
                attribute_loss_weight=(2.0, 0.5), reg_weight=0.2, next_item_weight=0.7, **HEAD,
                **attribute_config(ds, FIELDS))
    torch.manual_seed(0)
    return build_model("composed", num_items=ds.num_items, attributes=ds, **ENC, **{**base, **fields})


def test_difsr_fusion_and_sine_interests_combine_and_train(ds):
    """DIF-SR's fusion on the encoder, SINE's interests on its states (no paper's model
    has both), with the attribute predictors and SINE's regulariser: the total is the
    weighted sum of the logged terms, every part gets gradient, and training lowers it."""
    model = _combined(ds)
    assert [o.name for o in model.objectives] == ["item", "attr:category", "attr:brand", "covariance"]
    batch = _batch(ds)
    out = model.loss_terms(batch)
    weights = {"item": 0.7, "attr:category": 2.0, "attr:brand": 0.5, "covariance": 0.2}
    assert set(out.terms) == set(weights)
    torch.testing.assert_close(out.loss, sum(w * out.terms[n] for n, w in weights.items()), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.terms["covariance"], covariance_regularizer(model.prototypes))
    assert all(torch.isfinite(out.terms[n]) and out.terms[n] > 0 for n in weights)
    out.loss.backward()
    grads = _grads(model)
    for part in ("prototypes", "intent_query", "concept_key.weight", "next_key.weight", "predictors.0.weight",
                 "encoder.layers.0.attention.fusion_params.0", "embedding.attributes.1.weight",
                 "encoder.layers.1.feed_forward.dense_in.weight", "embedding.position.weight"):
        assert part in grads and grads[part].abs().sum() > 0, part
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss_terms(batch).loss.item()
    for _ in range(15):
        optimizer.zero_grad()
        model.loss_terms(batch).loss.backward()
        optimizer.step()
    assert model.loss_terms(batch).loss.item() < first


def test_a_regulariser_weight_of_0_leaves_it_out(ds):
    model = _combined(ds, reg_weight=0.0)
    batch = _batch(ds)
    out = model.loss_terms(batch)
    assert "covariance" not in out.terms and [o.name for o in model.objectives][-1] == "attr:brand"
    full = _combined(ds)
    full.load_state_dict(model.state_dict())
    kept = full.loss_terms(batch)
    torch.testing.assert_close(out.loss, kept.loss - 0.2 * kept.terms["covariance"], rtol=1e-6, atol=1e-6)
    # the prototypes' gradient is then the item term's alone
    out.loss.backward()
    alone = _combined(ds, reg_weight=0.0, attribute_loss_weight=0.0)
    alone.load_state_dict(model.state_dict())
    alone.loss_terms(batch).loss.backward()
    torch.testing.assert_close(model.prototypes.grad, alone.prototypes.grad, rtol=1e-5, atol=1e-7)


def test_bidirectional_attention_trains_the_whole_input_only(ds):
    model = _on_encoder(ds, attention="bidirectional", loss="ce").eval()
    batch = _batch(ds)
    out = model.loss_terms(batch)
    user = model.encode_sine(batch.input_ids, batch.lengths).user  # the whole input's interests
    target = batch.target_ids[:, -1]
    real = target > 0
    logp = torch.log_softmax(user[real] @ model.embedding.item.weight[1:].t(), -1)
    expected = -logp.gather(1, (target[real] - 1)[:, None]).mean()
    torch.testing.assert_close(out.terms["item"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fields, message", [
    (dict(reg_weight=0.1), "ComposedConfig.reg_weight must be 0 without SINE's interests"),
    (dict(interests="dss", reg_weight=0.1), "ComposedConfig.reg_weight must be 0 without SINE's interests"),
    (dict(max_prefixes=3), "ComposedConfig.max_prefixes must be None without SINE's interests"),
    (dict(interests="sine", num_prototypes=3, num_interests=4),
     "ComposedConfig.num_interests must be <= num_prototypes=3 with interests='sine'"),
    (dict(interests="sine", loss="bce"), "ComposedConfig.loss must be 'ce' or 'sampled' with interests='sine'"),
    (dict(interests="sine", seq2seq_weight=0.1), "ComposedConfig.seq2seq_weight must be 0 without intentions"),
    (dict(interests="sine", reg_weight=-1.0), "ComposedConfig.reg_weight must be a number >= 0"),
    (dict(interests="sine", merge="mean"), "ComposedConfig.merge must be one of ('aggregate', 'max')"),
    (dict(interests="sine", temperature=0.0), "ComposedConfig.temperature must be a positive number"),
    (dict(interests="sine", max_prefixes=0), "ComposedConfig.max_prefixes must be an int >= 1 or None"),
])
def test_bad_sine_compositions_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ComposedConfig(num_items=10, **fields)


def test_a_regulariser_alone_is_something_to_train():
    config = ComposedConfig(num_items=10, interests="sine", next_item_weight=0.0, reg_weight=0.1, **HEAD)
    assert [o.name for o in ComposedRecommender(config).objectives] == ["covariance"]


def test_the_sine_fields_are_sines_own():
    """SINE's fields in the composed config carry SINEConfig's checks, help and flags
    (one flag serves both models), except the regulariser's default (off, as every
    auxiliary term of the composition) and the aggregation temperature's flag and help
    (``--temperature`` is DSS's tau in the composed model)."""
    mine = {f.name: f for f in dataclasses.fields(ComposedConfig)}
    theirs = {f.name: f for f in dataclasses.fields(SINEConfig)}
    for name in ("num_prototypes", "num_interests", "temperature", "assign_temperature", "reg_weight",
                 "max_prefixes", "merge", "intent_attention"):
        a, b = dict(mine[name].metadata["seqrec"]), dict(theirs[name].metadata["seqrec"])
        if name == "temperature":
            assert (a.pop("flag"), b.pop("flag")) == ("aggregation-temperature", None)
            assert a.pop("help") == "tau of SINE's interest aggregation softmax (--model sine: --temperature)"
            b.pop("help")
        assert a == b, name
        if name != "reg_weight":
            assert mine[name].default == theirs[name].default, name
    assert (mine["reg_weight"].default, theirs["reg_weight"].default) == (0.0, 0.1)


@pytest.mark.parametrize("merge", ["aggregate", "max"])
def test_save_pretrained_round_trip_score_and_recommend(ds, tmp_path, merge):
    model = _on_encoder(ds, merge=merge, reg_weight=0.1, loss="sampled", max_prefixes=4)
    with torch.no_grad():  # spread-out weights: top-k must not hinge on near ties
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.eval()
    vocab = [f"i{k}" for k in range(1, ds.num_items + 1)]
    folder = model.save_pretrained(tmp_path / "m", vocab=vocab)
    loaded = seqrec.from_pretrained(folder)
    assert type(loaded) is ComposedRecommender and loaded.config == model.config and loaded.has_interests
    h = _batch(ds).input_ids
    torch.testing.assert_close(loaded.score(h), model.score(h), rtol=0, atol=0)
    ids, _ = model.recommend(h, 5)
    assert torch.equal(loaded.recommend(h, 5)[0], ids)
    full = model.score(h).scatter(1, h, float("-inf"))
    assert torch.equal(ids[:, 0], full.argmax(1))
    out = model.encode_sine(h)
    want = out.user @ model.embedding.item.weight.t() if merge == "aggregate" else \
        (out.interests @ model.embedding.item.weight.t()).amax(1)
    torch.testing.assert_close(model.score(h)[:, 1:], want[:, 1:])
    assert model.user_embedding(h).shape == (h.size(0), HEAD["num_interests"], ENC["hidden_size"])
    with pytest.raises(NotImplementedError, match="with interests='sine' the model scores from K interest vectors"):
        model.encode_last(h)


# ---------------------------------------------------------------------- CLI


def test_cli_trains_sine_interests_and_evaluate_reproduces_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "composed", *TINY, "--epochs", "2", "--interests", "sine", "--loss", "sampled",
            "--num-prototypes", "12", "--num-interests", "3", "--reg-weight", "0.5", "--aggregation-temperature",
            "0.2", "--merge", "max", "--max-prefixes", "5", "--side-information", "difsr",
            "--attributes", "category", "--attribute-size", "8", "--attribute-weight", "1.5", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "interests (test inputs" in captured.out  # the multi-interest diagnostics ran
    result = json.loads((out / "result.json").read_text())
    assert result["test_full"]["NDCG@20"] > 0
    config = json.loads((out / "config.json").read_text())["model"]["config"]
    assert {k: config[k] for k in ("interests", "num_prototypes", "num_interests", "reg_weight", "temperature",
                                   "merge", "max_prefixes")} == \
        {"interests": "sine", "num_prototypes": 12, "num_interests": 3, "reg_weight": 0.5, "temperature": 0.2,
         "merge": "max", "max_prefixes": 5}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    weights = {"item": 1.0, "attr:category": 1.5, "covariance": 0.5}
    for record in history:
        assert set(record["loss_terms"]) == set(weights)
        assert record["loss"] == pytest.approx(sum(w * record["loss_terms"][n] for n, w in weights.items()),
                                               rel=1e-5)
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    tables = capsys.readouterr().out
    assert tables.split("\n", 1)[1].strip() == captured.out.split("\n", 1)[1].strip()
    # --init from it: the head's sizes come from the checkpoint (they shape its tensors), so
    # every tensor, the head's included, loads
    tuned = tmp_path / "tuned"
    assert main(["train", "--model", "composed", *TINY, "--epochs", "1", "--init", str(out), "--interests", "sine",
                 "--loss", "sampled", "--out", str(tuned)]) == 0
    spec = json.loads((tuned / "config.json").read_text())["model"]
    assert (spec["config"]["num_prototypes"], spec["config"]["num_interests"]) == (12, 3)
    assert {"prototypes", "intent_query", "concept_key.weight"} <= set(spec["init"]["loaded"])
    assert not spec["init"]["mismatched"]


@pytest.mark.parametrize("extra, message", [
    (["--interests", "sine", "--loss", "bce"], "ComposedConfig.loss must be 'ce' or 'sampled' with interests='sine'"),
    (["--reg-weight", "0.1"], "--reg-weight is read only with --interests sine"),
    # --temperature is DSS's tau on the composed model; SINE's is --aggregation-temperature
    (["--interests", "sine", "--temperature", "0.7"], "--temperature is read only with --interests dss"),
    (["--interests", "sine", "--num-prototypes", "2", "--num-interests", "3"],
     "ComposedConfig.num_interests must be <= num_prototypes=2 with interests='sine'"),
])
def test_cli_refuses_a_bad_sine_composition(extra, message, tmp_path, capsys):
    assert main(["train", "--model", "composed", *TINY, "--epochs", "1", *extra, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "result.json").exists()


def test_two_fields_of_one_config_cannot_share_a_flag(monkeypatch):
    """DSS's tau and SINE's temperature are both --temperature in their own models; in the
    composed config SINE's takes --aggregation-temperature. Two fields of one config on
    one flag are refused (the flag would set one of them, silently)."""
    from seqrec.model_options import ModelOptions
    from seqrec.models.config import field_of
    from seqrec.models.dss import DSSConfig
    from seqrec.models.registry import REGISTRY, Registration

    @dataclasses.dataclass(frozen=True)
    class Clash(ComposedConfig):
        temperature: float = field_of(SINEConfig, "temperature")  # SINE's own flag: --temperature, as DSS's tau

    assert {f.metadata["seqrec"]["flag"] for f in dataclasses.fields(DSSConfig) if f.name == "tau"} == {"temperature"}
    monkeypatch.setitem(REGISTRY, "clash", Registration(Clash, ComposedRecommender, "clash"))
    with pytest.raises(ValueError, match="--temperature: Clash fields 'tau' and 'temperature' share this flag"):
        ModelOptions({"clash": "clash"})
    ModelOptions({"composed": "composed"})  # the composed config's own flags are distinct


def test_empty_rows_and_batches_without_targets_stay_finite(ds):
    """A fully padded row scores finitely (SINE's head gives it a finite user vector), and a
    batch without any target trains nothing but the regulariser (item term 0)."""
    model = _on_encoder(ds, loss="sampled", reg_weight=0.1)
    inputs = torch.tensor([[0, 0, 0, 0], [0, 3, 4, 5]])
    negatives = torch.randint(1, ds.num_items + 1, (2, 4, 3), generator=torch.Generator().manual_seed(0))
    out = model.loss_terms(inputs, torch.zeros_like(inputs), negatives)
    assert out.terms["item"].item() == 0.0
    torch.testing.assert_close(out.loss, 0.1 * covariance_regularizer(model.prototypes))
    out.loss.backward()
    model.eval()
    scores = model.score(inputs)
    assert torch.isfinite(scores[:, 1:]).all() and torch.isneginf(scores[:, 0]).all()
