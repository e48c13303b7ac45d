"""Any pretraining initialises any encoder completely (issue 29 item 1): every
(pretraining, fine-tuning model) pair transfers every encoder tensor by name, the load
reports what it left at initialisation and why, and a partial transfer is refused unless
asked for."""
from __future__ import annotations

import pytest
import torch

from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import SINE, SINEConfig, build_model, load_pretrained
from seqrec.models.difsr import attribute_config
from seqrec.models.pretrained import IncompleteLoadError, encoder_tensor_names
from seqrec.models.s3rec import item_attribute_table

D, LAYERS, MAX_LEN = 8, 2, 10


def _dataset():
    return synthetic(num_users=30, num_items=25, num_intents=3, seed=0)


def _pretrained(kind: str, ds) -> dict:
    """A pretraining model's state (fresh weights, seeded apart from the targets')."""
    torch.manual_seed(100)
    if kind == "s3rec":
        _, count, fields = item_attribute_table(ds)
        model = build_model("s3rec", num_items=ds.num_items, num_attributes=count, attribute_fields=fields,
                            max_len=MAX_LEN, hidden_size=D, num_layers=LAYERS, num_heads=2)
    else:
        model = build_model("dss", num_items=ds.num_items, max_len=MAX_LEN, hidden_size=D, num_layers=LAYERS,
                            num_intentions=3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _target(kind: str, ds, **extra):
    torch.manual_seed(0)
    fields = dict(num_items=ds.num_items, max_len=MAX_LEN, hidden_size=D)
    if kind == "sasrec":
        fields.update(num_layers=LAYERS)
    elif kind == "difsr":
        fields.update(num_layers=LAYERS, num_heads=2, inner_size=4 * D, attribute_sizes=4,
                      **attribute_config(ds, ["category"]))
    elif kind == "sine":
        fields.update(num_prototypes=6, num_interests=2)
    else:
        fields.update(num_layers=LAYERS, num_intentions=3)
    fields.update(extra)
    return build_model(kind, attributes=ds if kind == "difsr" else None, **fields)


# What each fine-tuning model keeps of its own after an encoder-only pretraining (S3-Rec).
OWN = {
    "difsr": {"position_", "attribute_", "fusion_params", "predictors", "embedding.attributes", "_attr_"},
    "sine": {"prototypes", "concept_", "assign_proj", "intent_", "interest_norm", "next_"},
    "dss": {"prototypes", "key_norm", "key_map", "query_norm", "query_bias", "distance", "beta_", "out_norm"},
}


@pytest.mark.parametrize("pretraining", ["s3rec", "dss"])
@pytest.mark.parametrize("finetune", ["sasrec", "difsr", "sine", "dss"])
def test_every_encoder_tensor_is_transferred(pretraining, finetune):
    ds = _dataset()
    source = _pretrained(pretraining, ds)
    model = _target(finetune, ds)
    encoder = encoder_tensor_names(model)
    expected = 2 if finetune == "sine" else 4 + 16 * LAYERS  # tables, norm; per block 10 + 6
    assert len(encoder) == expected, encoder
    report = load_pretrained(model, source)  # strict
    assert report.encoder == encoder and set(encoder) <= set(report.loaded)
    state = model.state_dict()
    for name in report.loaded:
        src = source[name]
        want = src[: state[name].size(0)] if name.endswith("item.weight") else src
        assert torch.equal(state[name], want), name
    if pretraining == "s3rec":  # the item table had the mask token's row
        assert report.partial == {"embedding.item.weight": f"first {ds.num_items + 1} of {ds.num_items + 2} rows"}
    # what stays at initialisation is the model's own, named as such
    own = set(report.own)
    if finetune == "sasrec" or pretraining == finetune:  # nothing but the encoder, or the same model
        assert report.complete and not own
    else:
        assert own and all(any(n.startswith(p) or p in n for p in OWN[finetune]) for n in own), own
        assert "the model's own: no such tensor in the checkpoint" in report.describe()


def test_a_partial_encoder_transfer_is_refused_and_copies_nothing():
    ds = _dataset()
    source = _pretrained("s3rec", ds)
    model = _target("sasrec", ds, num_layers=LAYERS + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IncompleteLoadError, match=r"encoder\.layers\.2\.feed_forward\.dense_in\.weight "
                                                   r"\(missing from the checkpoint\)") as info:
        load_pretrained(model, source)
    assert "--init-partial" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half loaded
    assert info.value.report.missing_encoder and all(n.startswith("encoder.layers.2.")
                                                     for n in info.value.report.missing_encoder)
    report = load_pretrained(model, source, strict=False)
    assert "encoder.layers.0.attention.query.weight" in report.loaded and not report.encoder_complete
    assert "encoder tensor missing from the checkpoint" in report.describe()


def test_an_encoder_tensor_of_another_shape_is_refused_an_own_part_reported():
    ds = _dataset()
    source = _pretrained("dss", ds)  # K = 3 intentions, feed-forward width 4 D
    # a DIF-SR whose feed-forward is narrower than the checkpoint's
    model = build_model("difsr", num_items=ds.num_items, max_len=MAX_LEN, hidden_size=D, num_layers=LAYERS,
                        num_heads=2, inner_size=2 * D, attribute_sizes=4, attributes=ds,
                        **attribute_config(ds, ["category"]))
    with pytest.raises(IncompleteLoadError, match=r"encoder\.layers\.0\.feed_forward\.dense_in\.weight \(shape "
                                                   r"\(16, 8\) here, \(32, 8\) in the checkpoint\)"):
        load_pretrained(model, source)
    # DSS's K = 3 prototypes against SINE's pool of 6 concept prototypes: the same name,
    # another part; SINE's own, left at initialisation and said so
    sine = _target("sine", ds)
    report = load_pretrained(sine, source)
    assert report.encoder_complete and "prototypes" in report.mismatched and "prototypes" not in report.loaded
    assert "prototypes (shape (6, 8) here, (3, 8) in the checkpoint)" in report.describe()


def test_sine_checkpoints_from_before_the_shared_names_still_load():
    ds = _dataset()
    model = _target("sine", ds)
    old = {("item.weight" if k == "embedding.item.weight" else "position.weight" if k == "embedding.position.weight"
            else k): v.clone() for k, v in model.state_dict().items()}
    assert "item.weight" in old and "embedding.item.weight" not in old
    fresh = SINE(SINEConfig(num_items=ds.num_items, max_len=MAX_LEN, hidden_size=D, num_prototypes=6,
                            num_interests=2))
    fresh.load_state_dict(old)  # strict: every old name maps
    assert torch.equal(fresh.embedding.item.weight, model.embedding.item.weight)
    fresh = _target("sine", ds)
    with torch.no_grad():
        fresh.embedding.position.weight.zero_()
    assert load_pretrained(fresh, old).complete  # --init reads the old names too
    assert torch.equal(fresh.embedding.position.weight, model.embedding.position.weight)


def test_shorter_max_len_takes_the_trailing_positions_for_every_model():
    ds = _dataset()
    source = _pretrained("s3rec", ds)
    for kind in ("sine", "difsr"):
        torch.manual_seed(0)
        common = dict(num_items=ds.num_items, max_len=MAX_LEN - 4, hidden_size=D)
        model = (build_model("sine", num_prototypes=6, num_interests=2, **common) if kind == "sine" else
                 build_model("difsr", num_layers=LAYERS, num_heads=2, inner_size=4 * D, attribute_sizes=4,
                             attributes=ds, **attribute_config(ds, ["category"]), **common))
        report = load_pretrained(model, source)
        assert report.partial["embedding.position.weight"].startswith("last 6 of 10 rows"), kind
        assert torch.equal(model.embedding.position.weight, source["embedding.position.weight"][4:])


def test_cli_init_refuses_a_partial_encoder_unless_init_partial(tmp_path, capsys):
    common = ["--data", "synthetic", "--synthetic-users", "60", "--synthetic-items", "40", "--max-len", "10"]
    pre = tmp_path / "pre"
    assert main(["pretrain", "--model", "s3rec", *common, "--epochs", "1", "--hidden-size", "8", "--num-layers", "1",
                 "--out", str(pre), "--no-progress"]) == 0
    capsys.readouterr()
    args = ["train", "--model", "sasrec", *common, "--epochs", "1", "--init", str(pre), "--num-layers", "2",
            "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "encoder.layers.1.attention.query.weight (missing from the checkpoint)" in err and "--init-partial" in err
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    assert main([*args, "--init-partial", "--out", str(tmp_path / "b")]) == 0
    assert "encoder.layers.1.attention.query.weight (encoder tensor missing from the checkpoint)" in \
        capsys.readouterr().err
    # DIF-SR from the same pretraining: the whole encoder, DIF-SR's own parts named
    assert main(["train", "--model", "difsr", *common, "--attributes", "category", "--epochs", "1", "--init", str(pre),
                 "--attribute-size", "4", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "(20 of the 20 encoder tensors)" in err, err
    assert "position_query.weight (the model's own" in err


def test_cli_init_partial_needs_init(capsys):
    assert main(["train", "--model", "sasrec", "--init-partial", "--epochs", "1"]) == 2
    assert "--init-partial says how to load --init's weights; give --init too" in capsys.readouterr().err
