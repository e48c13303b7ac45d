"""S3-Rec's self-supervised objectives (AAP, MIP, MAP, SP) as weighted terms of the composed
model, trained jointly with the next item (issue 29 item 1).

Each term is S3-Rec's own code (``S3RecObjectives``): on a fixed batch and a fixed masking
the composed model loaded with an S3-Rec state dict gives S3-Rec's pretraining losses and
gradients; the terms combine with the next item and DIF-SR's fusion, their total is the
weighted sum of the logged terms, a weight of 0 builds and computes nothing; the masking is
drawn from torch's seeded generator, so runs repeat and resume exactly; the CLI trains and
evaluates with the flags."""
from __future__ import annotations

import json

import pytest
import torch

from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import ComposedConfig, ComposedRecommender, S3Rec, S3RecConfig, build_model, load_pretrained
from seqrec.models.composed import Objective, config_objectives, s3rec_sequence, s3rec_term
from seqrec.models.difsr import attribute_config
from seqrec.models.s3rec import item_attribute_table
from test_composed import TINY, resumes_exactly

MAX_LEN = 12
ENC = dict(max_len=MAX_LEN, hidden_size=16, num_layers=2, num_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
FIELDS = ["category", "brand"]
PAPER = dict(aap_weight=0.2, mip_weight=1.0, map_weight=1.0, sp_weight=0.5)


@pytest.fixture(scope="module")
def ds():
    return synthetic(num_users=40, num_items=30, num_intents=3, seed=0)


def _batch(ds, seed=0):
    split = ds.leave_one_out(max_len=MAX_LEN)
    return next(iter(split.train_batches(16, seed=seed, epoch=0, num_negatives=1)))


def _composed(ds, **fields):
    """The composed model with FIELDS as attributes where a part reads them."""
    reads = fields.get("side_information") == "difsr" or fields.get("aap_weight") or fields.get("map_weight")
    torch.manual_seed(0)
    return build_model("composed", num_items=ds.num_items, attributes=ds,
                       **{**ENC, **(attribute_config(ds, FIELDS) if reads else {}), **fields})


def _s3rec(ds, **fields):
    table, num_attributes, names = item_attribute_table(ds, FIELDS)
    torch.manual_seed(3)
    model = S3Rec(S3RecConfig(num_items=ds.num_items, num_attributes=num_attributes, attribute_fields=names,
                              **ENC, **fields))
    with torch.no_grad():  # spread-out weights, so every term and gradient is far from trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.set_item_attributes(table)
    return model


# ---------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("reduction, aap_input", [("sum", "sequence"), ("mean", "sequence"), ("mean", "item")])
def test_each_term_is_s3recs_pretraining_term(ds, reduction, aap_input):
    """The composed model (causal next-item encoder, side information none) loaded with an
    S3-Rec state dict: on the same masking, every term and every gradient is S3-Rec's;
    S3-Rec's mask-token row becomes mask_embedding and the load is complete."""
    options = dict(reduction=reduction, aap_input=aap_input)
    s3rec = _s3rec(ds, **options, **PAPER)
    composed = _composed(ds, **options, **PAPER, next_item_weight=0.0)
    report = load_pretrained(composed, s3rec.state_dict())
    assert report.complete and not report.unused and "mask_embedding.weight" in report.loaded
    assert report.partial == {"embedding.item.weight": f"first {ds.num_items + 1} of {ds.num_items + 2} rows"}
    assert [o.name for o in composed.objectives] == ["aap", "mip", "map", "sp"]
    batch = _batch(ds)
    seq = s3rec_sequence(batch.input_ids, batch.target_ids, MAX_LEN)
    masked = s3rec.corrupt(seq, seed=11)
    assert bool((masked.segment_len > 0).any()) and bool((masked.pos_items > 0).any())
    want = s3rec.pretrain_losses(masked)
    got = composed.loss_terms(batch, masking=masked)
    assert set(want) == {"aap", "mip", "map", "sp"}
    for name, value in want.items():
        torch.testing.assert_close(got.terms[name], value, rtol=1e-6, atol=1e-6, msg=name)
    torch.testing.assert_close(got.loss, s3rec.weighted_loss(want), rtol=1e-6, atol=1e-6)
    s3rec.weighted_loss(want).backward()
    got.loss.backward()
    grads = dict(composed.named_parameters())
    for name, p in s3rec.named_parameters():
        if name == "embedding.item.weight":  # the items' rows, and the mask token's
            torch.testing.assert_close(grads[name].grad, p.grad[:-1], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grads["mask_embedding.weight"].grad, p.grad[-1:], rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_training_part_is_the_inputs_and_the_item_after_them():
    inputs = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]])
    targets = torch.tensor([[0, 0, 2, 8], [4, 5, 6, 9], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert s3rec_sequence(inputs, targets, 5).tolist() == [[0, 0, 1, 2, 8], [3, 4, 5, 6, 9], [0, 0, 0, 0, 7],
                                                           [0, 0, 0, 0, 0]]
    # max_len keeps the most recent items
    assert s3rec_sequence(inputs, targets, 4).tolist() == [[0, 1, 2, 8], [4, 5, 6, 9], [0, 0, 0, 7], [0, 0, 0, 0]]


def test_the_drawn_masking_is_seq_mask_of_the_training_part_under_the_torch_seed(ds):
    model = _composed(ds, mip_weight=1.0, sp_weight=0.5, next_item_weight=0.0)
    batch = _batch(ds)
    torch.manual_seed(5)
    drawn = model.loss_terms(batch)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2 ** 63 - 1, (), dtype=torch.int64))
    masked = model.corrupt(s3rec_sequence(batch.input_ids, batch.target_ids, MAX_LEN), seed=seed)
    fixed = model.loss_terms(batch, masking=masked)
    assert drawn.terms == fixed.terms
    torch.manual_seed(6)
    assert model.loss_terms(batch).terms["mip"] != drawn.terms["mip"]  # another seed, another masking


def test_the_terms_run_bidirectionally_on_a_causal_encoder(ds):
    """The next item reads the causal encoder; S3-Rec's terms read the same weights with
    bidirectional attention (S3-Rec's pretraining encoder): with DIF-SR's fusion too, an
    early position's state depends on a later item, and the selected outputs equal the
    padded pass."""
    for side in (dict(), dict(side_information="difsr", attribute_sizes=8),
                 dict(side_information="difsr", attribute_sizes=8, fusion_sees_masked=True)):  # the padded path
        model = _composed(ds, mip_weight=1.0, **side).eval()
        assert model.config.attention == "causal"
        seq = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 7, 8, model.mask_token, 9, 10]])
        later = seq.clone()
        later[:, -1] = 11
        rows, cols = torch.tensor([1, 0, 1, 0]), torch.tensor([3, 2, 1, 5])
        a, _ = model._hidden_at(seq, rows, cols, torch.tensor([1, 2]))
        b, _ = model._hidden_at(later, rows, cols, torch.tensor([1, 2]))
        assert not torch.allclose(a[:3], b[:3])  # earlier positions see the last item
        if side:
            full = model._encode_padded(seq, seq != 0, causal=False)
            torch.testing.assert_close(a, full[rows, cols], rtol=1e-5, atol=1e-6)


def test_a_masked_position_hides_its_items_attributes(ds):
    """With DIF-SR's fusion the mask token has no attributes (else MIP / MAP would read the
    masked item's), and its vector is mask_embedding."""
    model = _composed(ds, mip_weight=1.0, side_information="difsr", attribute_sizes=8)
    token = model.mask_token
    ids = torch.tensor([[0, 3, token]])
    fields = model._field_embeddings(ids)
    assert all(bool((f[0, 2] == 0).all()) and bool((f[0, 1] != 0).any()) for f in fields)
    vectors = model._lookup_items(ids)[0]
    assert torch.equal(vectors[0, 2], model.mask_embedding.weight[0])
    assert torch.equal(vectors[0, 1], model.embedding.item.weight[3])


# ---------------------------------------------------------------------- combination
def test_next_item_aap_mip_and_difsr_fusion_combine_and_train(ds):
    """next item + DIF-SR's attribute predictors + AAP + MIP on DIF-SR's fusion: the total is
    the weighted sum of the logged terms, the terms of weight 0 have no parameters (MAP, SP)
    or no gradient (a DIF-SR predictor of weight 0), and the loss falls."""
    model = _composed(ds, side_information="difsr", attribute_sizes=8, attribute_loss_weight=(1.0, 0.0),
                      aap_weight=0.1, mip_weight=1.0)
    assert [o.name for o in model.objectives] == ["item", "attr:category", "aap", "mip"]
    names = {n for n, _ in model.named_parameters()}
    assert {"aap.weight", "mip.weight", "attribute_embedding.weight", "mask_embedding.weight"} <= names
    assert not {n for n in names if n.startswith(("map.", "sp."))}
    batch = _batch(ds)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(12):
        torch.manual_seed(step)
        out = model.loss_terms(batch)
        weights = {"item": 1.0, "attr:category": 1.0, "aap": 0.1, "mip": 1.0}
        assert set(out.terms) == set(weights)
        torch.testing.assert_close(out.loss, sum(w * out.terms[n] for n, w in weights.items()), rtol=1e-6, atol=0)
        optimizer.zero_grad()
        out.loss.backward()
        if step == 0:
            grads = {n: p.grad for n, p in model.named_parameters()}
            assert grads["predictors.1.weight"] is None  # brand's predictor: weight 0
            for n in ("aap.weight", "mip.weight", "attribute_embedding.weight", "mask_embedding.weight",
                      "predictors.0.weight", "encoder.layers.0.attention.attribute_query.0.weight"):
                assert grads[n] is not None and bool(grads[n].abs().sum() > 0), n
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_weights_of_0_build_and_draw_nothing(ds):
    """All four weights 0 (the default): the model is the one without S3-Rec's terms, weight
    for weight and loss for loss (no parameter built, no random draw)."""
    plain = _composed(ds, side_information="difsr", attribute_sizes=8)
    off = _composed(ds, side_information="difsr", attribute_sizes=8, aap_weight=0.0, mip_weight=0.0, map_weight=0.0,
                    sp_weight=0.0)
    assert plain.state_dict().keys() == off.state_dict().keys()
    batch = _batch(ds)
    torch.manual_seed(1)
    a = plain.loss_terms(batch)
    after_a = torch.randint(0, 1000, (4,))
    torch.manual_seed(1)
    b = off.loss_terms(batch)
    assert torch.equal(a.loss, b.loss) and torch.equal(torch.randint(0, 1000, (4,)), after_a)
    # one term on: its heads only
    sp = _composed(ds, sp_weight=0.5)
    assert {n.split(".")[0] for n, _ in sp.named_parameters()} == {"embedding", "encoder", "mask_embedding", "sp"}


def test_objectives_of_ones_own_compute_only_the_s3rec_terms_they_read(ds):
    """Objectives of one's own that leave out some of S3-Rec's terms switched on: those
    are not computed (their heads are never called), the others are the full set's."""
    model = _composed(ds, **PAPER)
    batch = _batch(ds)
    masked = _s3rec(ds, **PAPER).corrupt(s3rec_sequence(batch.input_ids, batch.target_ids, MAX_LEN), seed=11)
    full = model.loss_terms(batch, masking=masked)
    assert model.s3rec_terms == ("aap", "mip", "map", "sp")
    model.objectives = tuple(o for o in config_objectives(model.config) if o.name not in ("map", "sp"))
    assert model.s3rec_terms == ("aap", "mip")
    calls = {name: 0 for name in ("aap", "mip", "map", "sp")}
    for name in calls:
        getattr(model, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    got = model.loss_terms(batch, masking=masked)
    assert calls == {"aap": 1, "mip": 1, "map": 0, "sp": 0}
    assert set(got.terms) == {"item", "aap", "mip"}
    for name in ("item", "aap", "mip"):
        torch.testing.assert_close(got.terms[name], full.terms[name], rtol=1e-6, atol=1e-6, msg=name)
    # none read: no corruption drawn before a compiled step either
    model.objectives = tuple(o for o in model.objectives if o.name == "item")
    assert model.s3rec_terms == () and model.compiled_step_options(batch) == {}


def test_an_objective_reading_a_switched_off_s3rec_term_is_refused(ds):
    """S3-Rec's term of an objective switched off (no head built) is refused up front,
    by the objective's name; S3Rec itself refuses such a name too."""
    model = _composed(ds, aap_weight=0.2)
    extra = Objective("masked items", 1.0, s3rec_term("mip"), compiles=True)
    with pytest.raises(ValueError, match=r"objectives \['masked items'\] read S3-Rec's \['mip'\], which the config "
                                         r"leaves off .*switched on: \['aap'\]"):
        ComposedRecommender(model.config, attributes=ds, objectives=(*model.objectives, extra))
    s3rec = _s3rec(ds, aap_weight=0.2, mip_weight=1.0, map_weight=0.0, sp_weight=0.5)
    batch = _batch(ds)
    masked = s3rec.corrupt(s3rec_sequence(batch.input_ids, batch.target_ids, MAX_LEN), seed=3)
    with pytest.raises(ValueError, match=r"S3-Rec objectives \['map'\] are not switched on"):
        s3rec.s3rec_losses(masked, ["mip", "map"])
    only = s3rec.s3rec_losses(masked, ["sp"])
    assert set(only) == {"sp"}
    torch.testing.assert_close(only["sp"], s3rec.s3rec_losses(masked)["sp"], rtol=0, atol=0)


def test_s3rec_terms_with_dss_intentions(ds):
    """The terms read the encoder's states, so they also go with DSS's intention head."""
    model = _composed(ds, interests="dss", num_heads=1, num_intentions=2, seq2seq_weight=0.1, mip_weight=1.0,
                      map_weight=0.5)
    torch.manual_seed(0)
    out = model.loss_terms(_batch(ds))
    weights = {"seq2item": 1.0, "seq2seq": 0.1, "mip": 1.0, "map": 0.5}
    torch.testing.assert_close(out.loss, sum(w * out.terms[n] for n, w in weights.items()), rtol=1e-6, atol=0)
    out.loss.backward()
    assert model.prototypes.grad is not None and model.mip.weight.grad is not None


def test_s3rec_terms_with_sine_interests(ds):
    """And with SINE's interest head (both parts read the same encoder states)."""
    model = _composed(ds, interests="sine", loss="sampled", num_prototypes=6, num_interests=2, reg_weight=0.1,
                      aap_weight=0.1, sp_weight=0.5)
    torch.manual_seed(0)
    out = model.loss_terms(_batch(ds))
    weights = {"item": 1.0, "aap": 0.1, "sp": 0.5, "covariance": 0.1}
    assert set(out.terms) >= set(weights)
    torch.testing.assert_close(out.loss, sum(w * out.terms[n] for n, w in weights.items()), rtol=1e-6, atol=0)
    out.loss.backward()
    assert model.prototypes.grad is not None and model.sp.weight.grad is not None and model.aap.weight.grad is not None


def test_runs_repeat_and_resume_exactly(tmp_path):
    """Two seeded runs give the same losses; a run killed after epoch 1 and resumed gives
    the uninterrupted run's losses and weights (the masking seeds come from torch's
    generator, which the checkpoint restores)."""
    history = resumes_exactly(tmp_path, side_information="difsr", hidden_dropout=0.2, aap_weight=0.1,
                              mip_weight=1.0, map_weight=0.2, sp_weight=0.5)
    assert {"item", "aap", "mip", "map", "sp"} <= set(history[0]["loss_terms"])


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("fields, message", [
    (dict(aap_weight=0.2), "attribute_fields must be one or more categorical attribute fields with aap_weight"),
    (dict(map_weight=1.0, attribute_fields=("price",), attribute_vocab_sizes=(0,)),
     "attribute_fields must be one or more categorical attribute fields"),
    (dict(aap_weight=0.2, attribute_fields=("category", "price"), attribute_vocab_sizes=(3, 0)),
     "attribute_fields must be categorical fields for S3-Rec's AAP / MAP (['price'] numeric"),
    (dict(mip_weight=1.0, attribute_fields=("category",), attribute_vocab_sizes=(3,)),
     "attribute_fields must be empty without side information (side_information='none') unless S3-Rec's AAP"),
    (dict(sp_weight=-1.0), "ComposedConfig.sp_weight must be a number >= 0"),
    (dict(mip_weight=1.0, mask_prob=2.0), r"ComposedConfig.mask_prob must be a number in [0, 1]"),
    (dict(aap_weight=0.1, aap_input="context", attribute_fields=("c",), attribute_vocab_sizes=(3,)),
     "ComposedConfig.aap_input must be one of"),
    (dict(mip_weight=1.0, reduction="max"), "ComposedConfig.reduction must be one of"),
])
def test_bad_s3rec_settings_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        ComposedConfig(num_items=10, **fields)


def test_aap_without_the_attribute_table_is_refused_by_field(ds):
    config = ComposedConfig(num_items=ds.num_items, **ENC, **attribute_config(ds, ["category"]), aap_weight=0.2)
    model = ComposedRecommender(config)  # built without attributes=
    with pytest.raises(ValueError, match=r"AAP / MAP read the item -> attribute table of attribute_fields "
                                         r"\['category'\], which this model was built without"):
        model.loss_terms(_batch(ds))
    batch = _batch(ds)
    with pytest.raises(ValueError, match="masking must be a SeqMaskOutput of the batch's 16 rows"):
        _composed(ds, mip_weight=1.0).loss_terms(batch, masking=batch.input_ids)


# ---------------------------------------------------------------------- CLI


def test_cli_trains_jointly_and_evaluate_reproduces_it(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "composed", *TINY, "--epochs", "2", "--side-information", "difsr", "--attributes",
            "category", "--attribute-size", "8", "--num-heads", "2", "--aap-weight", "0.1", "--mip-weight", "1",
            "--map-weight", "0.2", "--sp-weight", "0.5", "--mask-p", "0.3", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())["model"]["config"]
    assert {k: config[k] for k in ("aap_weight", "mip_weight", "map_weight", "sp_weight", "mask_prob", "reduction")} \
        == {"aap_weight": 0.1, "mip_weight": 1.0, "map_weight": 0.2, "sp_weight": 0.5, "mask_prob": 0.3,
            "reduction": "mean"}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    weights = {"item": 1.0, "aap": 0.1, "mip": 1.0, "map": 0.2, "sp": 0.5}
    for record in history:
        terms = record["loss_terms"]
        assert set(weights) <= set(terms)
        assert record["loss"] == pytest.approx(sum(w * terms[n] for n, w in weights.items()), rel=1e-5)
    assert json.loads((out / "result.json").read_text())["test_full"]["NDCG@20"] > 0
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1].strip() == printed.split("\n", 1)[1].strip()


def test_cli_init_from_s3rec_pretraining_keeps_its_heads_and_mask_token(tmp_path, capsys):
    """`seqrec pretrain --model s3rec` then joint training from it: the encoder, the mask
    token and the heads of the terms switched on all load."""
    pre = tmp_path / "pre"
    assert main(["pretrain", "--model", "s3rec", *TINY[:8], "--epochs", "1", "--no-progress", "--num-heads", "2",
                 "--attributes", "category", "--out", str(pre)]) == 0
    out = tmp_path / "ft"
    assert main(["train", "--model", "composed", *TINY, "--epochs", "1", "--init", str(pre), "--attributes", "category",
                 "--aap-weight", "0.2", "--mip-weight", "1", "--out", str(out)]) == 0
    init = json.loads((out / "config.json").read_text())["model"]["init"]
    assert {"mask_embedding.weight", "aap.weight", "mip.weight", "attribute_embedding.weight"} <= set(init["loaded"])
    assert not init["missing"] and not init["mismatched"]
    assert {"map.weight", "sp.weight"} <= set(init["unused"])
