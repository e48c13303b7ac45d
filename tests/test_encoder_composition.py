"""One encoder, attention passed in (issue 28 item 1): DIF-SR is the shared
TransformerEncoder with DIF-SR's attention; parameter names are shared, old DIF-SR
checkpoints load through the rename map; a new attention composes without a new encoder."""
from __future__ import annotations

from functools import partial

import pytest
import torch

from seqrec.data import synthetic
from seqrec.models import DIFSR, TransformerEncoder, build_model, load_pretrained
from seqrec.models.difsr import DIFMultiHeadAttention, DIFSRConfig, attribute_config
from seqrec.models.layers import CroppedGroups, MultiHeadSelfAttention, TransformerBlock


def _difsr(ds, **kw):
    torch.manual_seed(0)
    model = build_model("difsr", num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=2, num_heads=2,
                        inner_size=8, attribute_sizes=4, attributes=ds, **attribute_config(ds, ["category"]), **kw)
    return model


def test_difsr_is_the_shared_encoder_with_dif_attention():
    ds = synthetic(num_users=20, num_items=30, num_intents=3, seed=0)
    model = _difsr(ds)
    assert type(model.encoder) is TransformerEncoder
    assert all(type(b) is TransformerBlock and type(b.attention) is DIFMultiHeadAttention
               for b in model.encoder.layers)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("layers.") for n in names)
    assert "encoder.layers.1.attention.query.weight" in names
    assert "encoder.layers.1.feed_forward.dense_in.weight" in names


def test_old_difsr_checkpoint_names_load_through_the_rename_map():
    ds = synthetic(num_users=20, num_items=30, num_intents=3, seed=0)
    model = _difsr(ds)
    old_names = {(k[len("encoder."):] if k.startswith("encoder.layers.") else k): v.clone()
                 for k, v in model.state_dict().items()}
    assert "layers.0.attention.fusion_params.0" in old_names  # the layout before the shared encoder
    fresh = _difsr(ds, fusion="gate")
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(old_names)  # strict: every name maps
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert DIFSR.RENAMED_PREFIXES == {"layers.": "encoder.layers."}


def test_pretrained_encoder_initialises_difsr_item_attention_and_ffn():
    """Same hidden size: an S3-Rec-style encoder's blocks load into DIF-SR's by name
    (issue 29.1 was 4 of 63 tensors before the names were shared)."""
    ds = synthetic(num_users=20, num_items=30, num_intents=3, seed=0)
    sasrec = build_model("sasrec", num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=2, num_heads=2,
                         inner_size=8)
    model = _difsr(ds)
    report = load_pretrained(model, sasrec.state_dict())
    for l in range(2):
        for part in ("attention.query", "attention.key", "attention.value", "attention.out", "attention.norm",
                     "feed_forward.dense_in", "feed_forward.dense_out", "feed_forward.norm"):
            for kind in ("weight", "bias"):
                assert f"encoder.layers.{l}.{part}.{kind}" in report.loaded
    # what stays DIF-SR's own: position / attribute projections, fusion maps, its attribute tables
    assert all("position_" in n or "attribute_" in n or "fusion_params" in n or n.startswith(("predictors",
               "embedding.attributes", "_attr_")) for n in report.missing), report.missing


def test_a_new_attention_is_a_new_class_not_a_new_encoder():
    """DIF-SR's attention, bidirectional, in a bare encoder: composition by argument."""
    cfg = DIFSRConfig(num_items=10, max_len=6, hidden_size=8, num_heads=2, inner_size=8, num_layers=1,
                      hidden_dropout=0.0, attention_dropout=0.0, fusion="sum")
    torch.manual_seed(0)
    enc = TransformerEncoder(1, 8, 2, 8, 0.0, 0.0, causal=False, attention=partial(DIFMultiHeadAttention, cfg))
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    positions = torch.randn(6, 8)
    out = enc(x, mask, side={"positions": positions, "attributes": []}, skip_padding=False)
    # bidirectional: the first position depends on the last one
    x2 = x.clone()
    x2[:, -1] += 1.0
    out2 = enc(x2, mask, side={"positions": positions, "attributes": []}, skip_padding=False)
    assert not torch.allclose(out[:, 0], out2[:, 0])
    causal = enc(x2, mask, causal=True, side={"positions": positions, "attributes": []}, skip_padding=False)
    base = enc(x, mask, causal=True, side={"positions": positions, "attributes": []}, skip_padding=False)
    torch.testing.assert_close(causal[:, 0], base[:, 0])
    with pytest.raises(ValueError, match="needs side"):
        enc(x, mask, skip_padding=False)
    with pytest.raises(ValueError, match="takes no side inputs"):
        MultiHeadSelfAttention(8, 2, 0.0, 0.0)(x, mask, True, side={"positions": positions})


def test_cropped_groups_cover_the_selected_positions_in_order():
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    select = mask.clone()
    select[1, :3] = False
    groups = CroppedGroups(mask, select, max_len=40)  # widths 8, 16, 32, 40: every row in the 8-wide group
    assert [w for _, w, _, _ in groups.groups] == [8]
    ids = torch.arange(20).view(4, 5) + 1
    outputs = [groups.real(ids, g)[keep].float()[:, None] for g, (_, _, _, keep) in enumerate(groups.groups)]
    merged = groups.merge(outputs, torch.zeros(0, 1))
    assert merged.squeeze(1).long().tolist() == ids[select].tolist()
