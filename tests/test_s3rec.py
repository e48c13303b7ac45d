"""S3-Rec: the four objectives against direct formulas, switches, gradients, pretraining loop,
checkpoint -> fine-tune by name, CLI."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.data import SequenceDataset, synthetic
from seqrec.models import (
    S3Rec,
    S3RecConfig,
    SASRec,
    SASRecConfig,
    build_model,
    load_pretrained,
    read_pretrained_state,
)
from seqrec.models.layers import LengthGroups
from seqrec.models.s3rec import OBJECTIVES, item_attribute_table
from seqrec.ops import SeqMaskOutput, seq_mask
from seqrec.train import PretrainConfig, Pretrainer, PretrainSamples, load_checkpoint

NUM_ITEMS, NUM_ATTR, MAX_LEN = 9, 5, 8
# Item i's attribute ids (row 0 = padding item); item 9 has none.
TABLE = torch.tensor([[0, 0, 0], [1, 2, 0], [3, 0, 0], [1, 4, 5], [2, 0, 0], [5, 3, 0],
                      [4, 0, 0], [1, 0, 0], [2, 3, 4], [0, 0, 0]])
# Lengths 6, 1, 0 (all padding), 3, 8 (full), 2: odd lengths and every edge case.
BATCH = torch.tensor([[0, 0, 3, 1, 4, 4, 7, 2],
                      [0, 0, 0, 0, 0, 0, 0, 5],
                      [0, 0, 0, 0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 9, 8, 1],
                      [6, 2, 9, 1, 3, 3, 5, 8],
                      [0, 0, 0, 0, 0, 0, 2, 6]])
TINY_CLI = ["--data", "synthetic", "--synthetic-users", "150", "--synthetic-items", "80", "--max-len", "12"]


# conftest.one_thread: tiny tensors, one intra-op thread
pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(dtype=torch.float64, backend=None, **overrides) -> S3Rec:
    fields = dict(num_items=NUM_ITEMS, num_attributes=NUM_ATTR, max_len=MAX_LEN, hidden_size=8,
                  num_layers=2, num_heads=2)
    fields.update(overrides)
    torch.manual_seed(0)
    model = S3Rec(S3RecConfig(**fields), backend=backend).to(dtype)
    # Larger weights than the 0.02 init, so every term is far from its value at 0.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.set_item_attributes(TABLE)
    return model


def corrupted(model, seed=3, p=0.5) -> SeqMaskOutput:
    """BATCH corrupted with a higher p than the paper's, so every row has masked items."""
    return seq_mask(BATCH, num_items=NUM_ITEMS, mask_token=model.mask_token, mask_prob=p, seed=seed)


def row_states(model, seq_row):
    """Encoder output of ONE row, cropped to its real items: [len, D] (no batching, no padding)."""
    real = seq_row[seq_row != 0]
    return model(real.unsqueeze(0))[0]


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def bce(score, target):
    return -(log_sigmoid(score) if target else log_sigmoid(-score))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def nce_one_negative(f_pos, f_neg):
    """The paper's f(pos) - log sum exp f over {pos, neg}, negated."""
    return -(f_pos - math.log(math.exp(f_pos) + math.exp(f_neg)))


def direct_losses(model, m: SeqMaskOutput) -> dict[str, float]:
    """Every objective from the paper's formulas, one position at a time."""
    item_emb = model.embedding.item.weight
    attr_emb = model.attribute_embedding.weight
    mask = model.mask_token
    lin = lambda layer, x: (layer.weight @ x + layer.bias)  # noqa: E731
    total = {"aap": 0.0, "mip": 0.0, "map": 0.0, "sp": 0.0}
    for b in range(BATCH.size(0)):
        row = m.masked_items[b]
        n_real = int((row != 0).sum())
        if n_real == 0:
            continue
        states = row_states(model, row)
        for j, t in enumerate(range(BATCH.size(1) - n_real, BATCH.size(1))):
            item = int(row[t])
            F_t = states[j]
            if item != mask:  # AAP on the encoder output (or the item embedding), every attribute
                x = lin(model.aap, F_t if model.config.aap_input == "sequence" else item_emb[item])
                for a in range(1, NUM_ATTR + 1):
                    total["aap"] += bce(float(x @ attr_emb[a]), a in TABLE[item].tolist())
                continue
            pos, neg = int(m.pos_items[b, t]), int(m.neg_items[b, t])
            h = lin(model.mip, F_t)
            total["mip"] += nce_one_negative(sig(float(h @ item_emb[pos])), sig(float(h @ item_emb[neg])))
            h = lin(model.map, F_t)
            for a in range(1, NUM_ATTR + 1):
                total["map"] += bce(float(h @ attr_emb[a]), a in TABLE[pos].tolist())
        if int(m.segment_len[b]) > 0:
            s = lin(model.sp, row_states(model, m.masked_segment_seq[b])[-1])
            f_pos = sig(float(s @ row_states(model, m.pos_segment[b])[-1]))
            f_neg = sig(float(s @ row_states(model, m.neg_segment[b])[-1]))
            total["sp"] += nce_one_negative(f_pos, f_neg)
    return total


# ---------------------------------------------------------------- objectives


@pytest.mark.parametrize("aap_input", ["sequence", "item"])
def test_each_objective_matches_the_direct_formula(aap_input):
    model = make_model(aap_input=aap_input).eval()  # no dropout: values are deterministic
    model.requires_grad_(False)
    m = corrupted(model, p=0.5)
    assert int((m.masked_items == model.mask_token).sum()) >= 6 and int((m.segment_len > 0).sum()) == 4
    got = model.pretrain_losses(m)
    want = direct_losses(model, m)
    assert list(got) == list(OBJECTIVES)
    for name in OBJECTIVES:
        assert want[name] > 0.1
        assert got[name].item() == pytest.approx(want[name], rel=1e-10), name
    total = model.weighted_loss(got)
    assert total.item() == pytest.approx(0.2 * want["aap"] + want["mip"] + want["map"] + 0.5 * want["sp"], rel=1e-10)


def test_aap_on_the_sequence_and_mean_reduction():
    model = make_model(aap_input="sequence").eval()
    m = corrupted(model)
    keep = (m.masked_items != 0) & (m.masked_items != model.mask_token)
    hidden = model(m.masked_items)[keep]
    items = m.masked_items[keep]
    scores = model.aap(hidden) @ model.attribute_embedding.weight[1:].t()
    targets = torch.zeros_like(scores)
    for r, i in enumerate(items.tolist()):
        for a in TABLE[i].tolist():
            if a:
                targets[r, a - 1] = 1
    want = torch.nn.functional.binary_cross_entropy_with_logits(scores, targets, reduction="sum")
    assert model.pretrain_losses(m)["aap"].item() == pytest.approx(want.item(), rel=1e-10)

    mean = make_model(reduction="mean").eval()
    summed = make_model().eval()
    counts = {"aap": int(((m.masked_items != 0) & (m.masked_items != mean.mask_token)).sum()),
              "mip": int((m.masked_items == mean.mask_token).sum()),
              "sp": int((m.segment_len > 0).sum())}
    counts["map"] = counts["mip"]
    got_mean, got_sum = mean.pretrain_losses(m), summed.pretrain_losses(m)
    for name in OBJECTIVES:
        assert got_mean[name].item() == pytest.approx(got_sum[name].item() / counts[name], rel=1e-12)


@pytest.mark.parametrize("off", [("aap",), ("mip",), ("map",), ("sp",), ("aap", "map"), ("mip", "map", "sp")])
def test_objectives_switch_off(off):
    full = make_model().eval()
    part = make_model(**{f"{o}_weight": 0.0 for o in off}).eval()
    m = corrupted(full)
    all_losses, some = full.pretrain_losses(m), part.pretrain_losses(m)
    assert set(some) == set(OBJECTIVES) - set(off)
    for name, value in some.items():  # the others are unchanged (eval mode: rows independent)
        assert value.item() == pytest.approx(all_losses[name].item(), rel=1e-12)
    weights = {"aap": 0.2, "mip": 1.0, "map": 1.0, "sp": 0.5}
    assert part.weighted_loss(some).item() == pytest.approx(
        sum(weights[k] * all_losses[k].item() for k in some), rel=1e-12)


def test_encoder_runs_once_per_batch_and_skips_unneeded_passes():
    rows = []
    masked = corrupted(make_model()).masked_items
    kept_rows = int(((masked != 0) & (masked != NUM_ITEMS + 1)).any(1).sum())
    assert 0 < kept_rows < 5  # the 1-item row has only its (always masked) last item
    for weights, expected in [
        ({}, [5 + 3 * 4]),  # item-masked rows with an item (5), 3 segment passes of the 4 rows with a segment
        ({"sp_weight": 0.0}, [5]),  # the rows with a masked item
        ({"mip_weight": 0.0, "map_weight": 0.0}, [kept_rows + 3 * 4]),  # AAP reads unmasked positions
        ({"mip_weight": 0.0, "map_weight": 0.0, "aap_input": "item"}, [3 * 4]),  # AAP on e_i: no encoder
        ({"mip_weight": 0.0, "map_weight": 0.0, "sp_weight": 0.0, "aap_input": "item"}, []),
    ]:
        model = make_model(**weights)
        encode = model.encoder.encode_packed

        def counted(h, packed, **kw):
            rows.append(packed.mask.shape[0])
            return encode(h, packed, **kw)

        model.encoder.encode_packed = counted
        rows.clear()
        model.pretrain_losses(corrupted(model))
        assert rows == expected, weights


def test_gradient_reaches_every_parameter():
    for aap_input in ("item", "sequence"):
        model = make_model(dtype=torch.float32, aap_input=aap_input).train()
        loss = model.weighted_loss(model.pretrain_losses(corrupted(model)))
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
            assert torch.isfinite(p.grad).all(), name
        # The mask token's embedding learns; the padding row never does.
        assert float(model.embedding.item.weight.grad[model.mask_token].abs().sum()) > 0
        assert float(model.embedding.item.weight.grad[0].abs().sum()) == 0


@pytest.mark.parametrize("aap_input", ["item", "sequence"])
def test_gradients_equal_one_plain_padded_pass(monkeypatch, aap_input):
    """Length groups, ``select`` and the single item-table lookup (``lookup_rows``) change
    no gradient: the plain path (taken under torch.compile) runs the encoder once on the
    padded batch and looks every table up separately."""
    model = make_model(aap_input=aap_input).eval()
    m = seq_mask(BATCH.repeat(3, 1), num_items=NUM_ITEMS, mask_token=model.mask_token, mask_prob=0.5, seed=3)
    assert m.masked_items.size(0) >= 16  # enough rows for the length groups

    def gradients():
        params = list(model.parameters())
        return torch.autograd.grad(model.weighted_loss(model.pretrain_losses(m)), params, allow_unused=True)

    fast = gradients()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    plain = gradients()
    for (name, _), a, b in zip(model.named_parameters(), fast, plain):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_length_grouped_forward_equals_one_padded_call():
    n = 40  # groups of width 8, 16, 32 and 40
    model = make_model(max_len=n).eval()
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(0, n + 1, (40,), generator=gen)
    seq = torch.randint(1, NUM_ITEMS + 2, (40, n), generator=gen)  # mask token included
    seq = seq * (torch.arange(n) >= (n - lengths).unsqueeze(1))
    seq[0] = 0
    seq[0, :3] = torch.tensor([4, 5, 6])  # right padding: the row keeps its whole span
    seq[1] = 0
    seq[1, -12:] = 7
    seq[1, -3] = 0  # a hole
    assert len(LengthGroups(seq != 0).groups) == 4
    grouped = model(seq)
    model.encoder.skip_padding = False  # the plain padded pass
    plain = model.encoder(model.embedding(seq), seq != 0, causal=False)
    model.encoder.skip_padding = True
    real = seq != 0
    torch.testing.assert_close(grouped[real], plain[real], rtol=1e-12, atol=1e-12)
    assert bool((grouped[~real] == 0).all())
    r, c = real.nonzero(as_tuple=True)
    pick = torch.randperm(r.numel(), generator=gen)[:50]  # any order, repeats of a row
    extra_ids = torch.tensor([3, 0, NUM_ITEMS + 1, 3])
    hidden, extra = model._hidden_at(seq, r[pick], c[pick], extra_ids)
    torch.testing.assert_close(hidden, plain[r[pick], c[pick]], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(extra, model.embedding.item.weight[extra_ids], rtol=0, atol=0)


def test_bidirectional():
    model = make_model().eval()
    seq = torch.tensor([[0, 1, 2, 3, 4]])
    changed = seq.clone()
    changed[0, -1] = 5
    a, b = model(seq), model(changed)
    assert not torch.allclose(a[0, 1], b[0, 1])  # an earlier position sees a later item


def test_reference_backend_gives_the_same_losses():
    fast = make_model().eval()
    ref = make_model(backend="reference").eval()
    a = fast.pretrain_loss(BATCH, seed=11)[1]
    b = ref.pretrain_loss(BATCH, seed=11)[1]
    for name in OBJECTIVES:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-12)


# ---------------------------------------------------------------- config and side information


@pytest.mark.parametrize("fields,match", [
    (dict(num_items=0), r"num_items must be an int >= 1"),
    (dict(hidden_size=10, num_heads=3), r"divisible by num_heads"),
    (dict(mask_prob=1.5), r"mask_prob must be a number in \[0, 1\]"),
    (dict(aap_weight=-1.0), r"aap_weight must be a number >= 0"),
    (dict(sp_weight=float("nan")), r"sp_weight must be a number >= 0"),
    (dict(aap_weight=0, mip_weight=0, map_weight=0, sp_weight=0), r"every objective weight is 0"),
    (dict(num_attributes=0), r"AAP and MAP need item attributes"),
    (dict(aap_input="context"), r"aap_input must be one of"),
    (dict(reduction="max"), r"reduction must be one of"),
    (dict(hidden_dropout=1.0), r"hidden_dropout must be a number in \[0, 1\)"),
    (dict(attribute_fields=["brand"]), r"attribute_fields must be a tuple"),
])
def test_config_validation(fields, match):
    base = dict(num_items=NUM_ITEMS, num_attributes=NUM_ATTR)
    with pytest.raises(ValueError, match=match):
        S3RecConfig(**{**base, **fields})


def test_no_attributes_needs_aap_and_map_off():
    model = S3Rec(S3RecConfig(num_items=NUM_ITEMS, aap_weight=0, map_weight=0))
    assert set(model.pretrain_losses(model.corrupt(BATCH, seed=0))) == {"mip", "sp"}
    unattached = S3Rec(S3RecConfig(num_items=NUM_ITEMS, num_attributes=NUM_ATTR))
    with pytest.raises(ValueError, match="attach_dataset"):
        unattached.pretrain_losses(unattached.corrupt(BATCH, seed=0))
    with pytest.raises(ValueError, match=r"attribute ids must lie in \[0, num_attributes=5\]"):
        unattached.set_item_attributes(TABLE + 3)
    with pytest.raises(ValueError, match=r"int64 \[num_items \+ 1 = 10, W >= 1\]"):
        unattached.set_item_attributes(TABLE[:5])


def test_item_attribute_table_joins_fields():
    ds = SequenceDataset.from_arrays(
        [1, 1, 1, 2, 2], ["a", "b", "c", "a", "c"],
        item_attributes={"brand": {"a": "x", "b": "y"}, "tags": {"a": ["t1", "t2"], "c": ["t2"]}})
    table, count, fields = item_attribute_table(ds)
    assert fields == ("brand", "tags") and count == 4
    rows = [sorted(r[r > 0].tolist()) for r in table]
    assert rows == [[], [1, 3, 4], [2], [4]]  # brand ids 1..2, tag ids offset by 2
    table, count, fields = item_attribute_table(ds, ["tags"])
    assert count == 2 and [sorted(r[r > 0].tolist()) for r in table] == [[], [1, 2], [], [2]]
    with pytest.raises(ValueError, match="'color' not in the dataset"):
        item_attribute_table(ds, ["color"])
    model = S3Rec(S3RecConfig(num_items=3, num_attributes=4, attribute_fields=("brand", "tags")))
    model.attach_dataset(ds)
    assert torch.equal(model.item_attributes, item_attribute_table(ds)[0])
    with pytest.raises(ValueError, match="hold 2 attribute ids, the model num_attributes=4"):
        S3Rec(S3RecConfig(num_items=3, num_attributes=4, attribute_fields=("tags",))).attach_dataset(ds)


def test_build_model_and_compile_smoke():
    model = build_model("s3rec", num_items=NUM_ITEMS, num_attributes=NUM_ATTR, max_len=MAX_LEN, hidden_size=8)
    assert isinstance(model, S3Rec)
    model.eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(BATCH), model(BATCH))  # padding positions: 0 on both paths


# ---------------------------------------------------------------- loading by name


def test_load_pretrained_reports_every_tensor():
    pre = make_model(dtype=torch.float32)
    fine = SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_size=8))
    report = load_pretrained(fine, pre.state_dict())
    assert report.complete and set(report.loaded) == set(fine.state_dict())
    assert report.partial == {"embedding.item.weight": "first 10 of 11 rows"}
    assert set(report.unused) == {"attribute_embedding.weight", *(f"{h}.{w}" for h in ("aap", "mip", "map", "sp")
                                                                  for w in ("weight", "bias"))}
    for name, value in fine.state_dict().items():
        src = pre.state_dict()[name]
        assert torch.equal(value, src[: value.size(0)] if name == "embedding.item.weight" else src), name

    # A shorter max_len takes the pretrained table's trailing positions (right-aligned):
    # the embedding of every real position is the pretrained model's.
    short = SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=MAX_LEN - 3, hidden_size=8)).eval()
    report = load_pretrained(short, pre.state_dict())
    assert report.complete
    assert report.partial["embedding.position.weight"] == \
        f"last {MAX_LEN - 3} of {MAX_LEN} rows (right-aligned positions)"
    seq = torch.tensor([[0, 0, 3, 1, 4], [5, 2, 6, 2, 1]])
    pre.eval()
    torch.testing.assert_close(short.embedding(seq), pre.embedding(seq), rtol=0, atol=0)

    other = SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=MAX_LEN + 2, hidden_size=8, num_layers=3))
    with pytest.raises(ValueError, match=r"encoder.layers.2.attention.query.weight \(missing from the checkpoint\)"):
        load_pretrained(other, pre.state_dict())  # strict: a partial encoder is refused
    report = load_pretrained(other, pre.state_dict(), strict=False)
    assert not report.complete
    assert "embedding.position.weight" in report.mismatched
    assert all(n.startswith("encoder.layers.2.") for n in report.missing) and report.missing
    assert "not loaded (kept at initialisation): encoder.layers.2." in report.describe()


# ---------------------------------------------------------------- pretraining loop


def tiny_dataset():
    return synthetic(num_users=120, num_items=60, num_intents=3, mean_length=9, min_length=2, max_length=20,
                     seed=1)


def test_pretrain_samples_are_the_authors_prefixes():
    ds = tiny_dataset()
    samples = PretrainSamples(ds, max_len=6, kind="prefixes")
    expected = []
    for u in range(ds.num_users):
        part = ds.sequence(u)[:-2][-6:].tolist()
        expected += [part[: i + 1] for i in range(len(part))]
    assert len(samples) == len(expected)
    batch = samples.batch(np.arange(len(samples)))
    assert batch.shape == (len(expected), 6)
    for row, want in zip(batch.tolist(), expected):
        assert row == [0] * (6 - len(want)) + want
    users = PretrainSamples(ds, max_len=6, kind="users")
    assert len(users) == int((ds.lengths > 2).sum())
    assert samples.batch([0]).shape == (1, 1)  # width = the longest row


def pretrainer(tmp_path, epochs, ds=None, trainer_kw=None, **settings):
    ds = ds or tiny_dataset()
    table, count, fields = item_attribute_table(ds)
    torch.manual_seed(0)
    model = S3Rec(S3RecConfig(num_items=ds.num_items, num_attributes=count, attribute_fields=fields, max_len=10,
                              hidden_size=16, num_layers=1))
    model.attach_dataset(ds)
    return Pretrainer(model, ds, PretrainConfig(epochs=epochs, batch_size=64, seed=5, progress=False, **settings),
                      out_dir=tmp_path, model_spec={"name": "s3rec"}, **(trainer_kw or {}))


def test_pretraining_lowers_the_loss_and_resumes_exactly(tmp_path):
    full = pretrainer(tmp_path / "full", 3)
    history = full.fit()
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(history[0]) >= {"loss", *OBJECTIVES, "seconds", "samples"}
    lines = (tmp_path / "full" / "pretrain.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    state = load_checkpoint(tmp_path / "full" / "pretrain.pt")
    assert state["kind"] == "pretrain" and state["epoch"] == 3
    assert not list((tmp_path / "full").glob(".*.tmp"))  # atomic writes leave nothing behind

    first = pretrainer(tmp_path / "split", 1)
    first.fit()
    second = pretrainer(tmp_path / "split", 3)
    assert second.resume() and second.epoch == 1
    second.fit()
    assert [r["loss"] for r in second.history] == [r["loss"] for r in history]
    other = pretrainer(tmp_path / "split", 4)
    other.config.lr = 0.01  # another run's settings: refused, naming the difference
    with pytest.raises(ValueError, match=r"cannot resume, the run differs in lr \(lr: 0.001"):
        other.resume()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name


def test_pretraining_with_an_injected_optimizer_and_scheduler_resumes_exactly(tmp_path):
    import functools

    def kw():
        return {"optimizer": functools.partial(torch.optim.AdamW, lr=2e-3, weight_decay=0.1),
                "scheduler": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}

    full = pretrainer(tmp_path / "full", 3, trainer_kw=kw())
    history = full.fit()
    assert type(full.optimizer) is torch.optim.AdamW
    assert full.scheduler.last_epoch == 3 * full.num_batches()
    first = pretrainer(tmp_path / "split", 1, trainer_kw=kw())
    first.fit()
    second = pretrainer(tmp_path / "split", 3, trainer_kw=kw())
    assert second.resume() and second.scheduler.last_epoch == second.num_batches()
    second.fit()
    assert [r["loss"] for r in second.history] == [r["loss"] for r in history]
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    with pytest.raises(ValueError, match="the checkpoint's optimizer is AdamW, this run's is Adam"):
        pretrainer(tmp_path / "split", 4).resume()
    with pytest.raises(ValueError, match="with a learning-rate schedule, this run has none"):
        pretrainer(tmp_path / "split", 4, trainer_kw={"optimizer": kw()["optimizer"]}).resume()


def test_snapshots_are_the_shorter_runs(tmp_path):
    """keep_every keeps the weights of every N-th epoch; as a run is a pure function of
    its seed, the snapshot after 2 epochs of a 4-epoch run is the 2-epoch run."""
    long = pretrainer(tmp_path / "long", 4, keep_every=2)
    long.fit()
    assert sorted(p.name for p in (tmp_path / "long").glob("pretrain-epoch*")) == ["pretrain-epoch2.pt",
                                                                                 "pretrain-epoch4.pt"]
    short = pretrainer(tmp_path / "short", 2)
    short.fit()
    assert not list((tmp_path / "short").glob("pretrain-epoch*"))  # keep_every=0: only pretrain.pt
    weights, spec, path = read_pretrained_state(tmp_path / "long" / "pretrain-epoch2.pt")
    assert spec == {"name": "s3rec"} and path.name == "pretrain-epoch2.pt"
    assert weights.keys() == short.model.state_dict().keys()
    for name, value in short.model.state_dict().items():
        assert torch.equal(weights[name], value), name
    differs = any(not torch.equal(weights[n], v) for n, v in long.model.state_dict().items())
    assert differs, "the epoch-2 snapshot holds the last weights, not those of epoch 2"
    snapshot = load_checkpoint(tmp_path / "long" / "pretrain-epoch2.pt")
    assert snapshot["epoch"] == 2 and "optimizer" not in snapshot and len(snapshot["history"]) == 2
    # keep_every may change on resume (it changes nothing in training).
    more = pretrainer(tmp_path / "short", 3, keep_every=3)
    assert more.resume() and more.epoch == 2
    more.fit()
    assert [p.name for p in (tmp_path / "short").glob("pretrain-epoch*")] == ["pretrain-epoch3.pt"]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="PretrainConfig.keep_every must be an int >= 0"):
            PretrainConfig(keep_every=bad)


# ---------------------------------------------------------------- CLI


def test_cli_checkpoint_keeps_its_aap_input_across_the_default_change(tmp_path, capsys):
    """Checkpoints hold the whole model config, so a default changing later cannot change
    what one means; one written with only the fields the user set (before that) and no
    ``aap_input`` was trained on the item embedding, the default of its time: it resumes
    with ``--aap-input item`` and is refused, naming the field, without it."""
    pre = tmp_path / "pre"
    common = ["pretrain", *TINY_CLI, "--hidden-size", "8", "--num-layers", "1", "--batch-size", "256",
              "--out", str(pre), "--no-progress"]
    assert main([*common, "--epochs", "1", "--aap-input", "item"]) == 0
    path = pre / "pretrain.pt"
    state = load_checkpoint(path)
    assert state["model_spec"]["config"]["aap_input"] == "item"
    assert state["model_spec"]["config"]["hidden_act"] == "gelu"  # defaults stored too
    set_fields = ("num_items", "num_attributes", "attribute_fields", "max_len", "hidden_size", "num_layers")
    state["model_spec"]["config"] = {k: state["model_spec"]["config"][k] for k in set_fields}
    torch.save(state, path)  # as the CLI wrote it before storing whole configs
    capsys.readouterr()
    assert main([*common, "--epochs", "2", "--resume"]) == 2
    assert "aap_input: 'item' in the checkpoint, 'sequence' now" in capsys.readouterr().err
    assert main([*common, "--epochs", "2", "--aap-input", "item", "--resume"]) == 0
    assert "resumed" in capsys.readouterr().err


def test_cli_pretrain_then_finetune_loads_by_name(tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", *TINY_CLI, "--epochs", "1", "--hidden-size", "16", "--num-layers", "1",
                 "--batch-size", "128", "--out", str(pre), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "pretrain epoch   1 loss" in captured.err and "aap" in captured.err
    assert (pre / "pretrain.pt").exists() and len((pre / "pretrain.jsonl").read_text().splitlines()) == 1
    state = load_checkpoint(pre / "pretrain.pt")
    assert state["model_spec"]["config"]["attribute_fields"] == ("category", "brand")

    run = tmp_path / "fine"
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1", "--init", str(pre), "--out", str(run),
                 "--sampled-negatives", "20", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"--init {pre / 'pretrain.pt'}:" in err
    assert "loaded 20 tensors (20 of the 20 encoder tensors): embedding.item.weight, embedding.position.weight" in err
    assert "embedding.item.weight: first 81 of 82 rows" in err
    assert "not loaded (kept at initialisation): none" in err
    assert "unused from the checkpoint: attribute_embedding.weight, aap.weight" in err
    result = json.loads((run / "result.json").read_text())
    assert result["model"]["name"] == "sasrec" and result["model"]["finetune_of"] == "s3rec"
    assert result["model"]["config"]["hidden_size"] == 16  # architecture from the checkpoint
    assert result["model"]["init"]["missing"] == [] and result["model"]["init"]["mismatched"] == {}
    assert main(["evaluate", "--checkpoint", str(run)]) == 0  # the fine-tuned run is a plain SASRec run


def test_cli_keep_every_then_finetune_from_a_snapshot(tmp_path, capsys):
    pre = tmp_path / "pre"
    common = ["pretrain", *TINY_CLI, "--hidden-size", "8", "--num-layers", "1", "--batch-size", "256",
              "--out", str(pre), "--no-progress"]
    assert main([*common, "--epochs", "2", "--keep-every", "1"]) == 0
    assert f"earlier epochs kept: {pre / 'pretrain-epoch1.pt'}, {pre / 'pretrain-epoch2.pt'}" in capsys.readouterr().out
    run = tmp_path / "fine"
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1", "--init", str(pre / "pretrain-epoch1.pt"),
                 "--out", str(run), "--sampled-negatives", "20", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"--init {pre / 'pretrain-epoch1.pt'}:" in err and "loaded 20 tensors" in err
    init = json.loads((run / "result.json").read_text())["model"]["init"]
    assert init["path"] == str(pre / "pretrain-epoch1.pt") and init["missing"] == []
    assert main(["evaluate", "--checkpoint", str(pre / "pretrain-epoch1.pt")]) == 2
    assert "a pretraining checkpoint, nothing to evaluate" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # refused while parsing, naming the option
        main([*common, "--epochs", "3", "--keep-every", "-1", "--resume"])
    assert "argument --keep-every: must be >= 0, got -1" in capsys.readouterr().err


def test_cli_ablation_switches(tmp_path, capsys):
    assert main(["pretrain", *TINY_CLI, "--epochs", "1", "--hidden-size", "8", "--num-layers", "1",
                 "--no-aap", "--no-sp", "--map-weight", "2", "--batch-size", "256", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    record = json.loads((tmp_path / "pretrain.jsonl").read_text())
    assert set(record) & set(OBJECTIVES) == {"mip", "map"}
    config = load_checkpoint(tmp_path / "pretrain.pt")["model_spec"]["config"]
    assert (config["aap_weight"], config["sp_weight"], config["map_weight"]) == (0.0, 0.0, 2.0)


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1", "--init", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such checkpoint file" in capsys.readouterr().err
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1", "--init", str(tmp_path)]) == 2
    assert "no pretrain.pt or checkpoint.pt in this folder" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1", "--init", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt: not a readable checkpoint" in capsys.readouterr().err
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1"]) == 2
    assert "--model s3rec fine-tunes a pretrained model: give --init" in capsys.readouterr().err
    # A pretrained checkpoint of another size does not fit silently.
    pre = tmp_path / "pre"
    assert main(["pretrain", *TINY_CLI, "--epochs", "1", "--hidden-size", "8", "--num-layers", "1",
                 "--max-len", "10", "--batch-size", "256", "--out", str(pre), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1", "--init", str(pre)]) == 2
    err = capsys.readouterr().err
    assert "embedding.position.weight (shape (12, 8) here, (10, 8) in the checkpoint)" in err
    assert "or load what fits with --init-partial" in err
    # Another dataset, or another model's checkpoint: said before any loading report.
    other_data = ["--data", "synthetic", "--synthetic-users", "150", "--synthetic-items", "70", "--max-len", "10"]
    assert main(["train", "--model", "s3rec", *other_data, "--epochs", "1", "--init", str(pre)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"pretrained on \d+ items, this dataset has \d+; fine-tune on the dataset", err)
    assert "loaded" not in err
    dss = tmp_path / "dss"
    assert main(["train", "--model", "dss", *TINY_CLI, "--epochs", "1", "--hidden-size", "8",
                 "--sampled-negatives", "20", "--out", str(dss), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "s3rec", *TINY_CLI, "--epochs", "1", "--init", str(dss)]) == 2
    err = capsys.readouterr().err
    assert "a 'dss' checkpoint, not an s3rec pretraining one" in err and "loaded" not in err
    assert main(["evaluate", "--checkpoint", str(pre)]) == 2
    assert "holds a pretraining checkpoint (pretrain.pt), nothing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(pre / "pretrain.pt")]) == 2
    assert "a pretraining checkpoint, nothing to evaluate" in capsys.readouterr().err
    assert main(["pretrain", "--data", "synthetic", "--synthetic-users", "50", "--synthetic-items", "40",
                 "--mask-p", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "mask_prob must be a number in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow  # minutes on 2 loaded cores; `make test-fast` leaves it out
def test_pretrain_then_finetune_on_synthetic_beats_popularity(tmp_path):
    from seqrec.eval.baselines import popularity_baseline
    from seqrec.train import TrainConfig, Trainer

    ds = synthetic(num_users=600, num_items=200, seed=0)
    table, count, fields = item_attribute_table(ds)
    torch.manual_seed(0)
    arch = dict(num_items=ds.num_items, max_len=20, hidden_size=32, num_layers=1, num_heads=1,
                hidden_dropout=0.2, attention_dropout=0.2)
    pre = S3Rec(S3RecConfig(num_attributes=count, attribute_fields=fields, **arch))
    pre.attach_dataset(ds)
    history = Pretrainer(pre, ds, PretrainConfig(epochs=2, batch_size=256, seed=0, progress=False),
                         out_dir=tmp_path).fit()
    assert history[1]["loss"] < history[0]["loss"]

    weights, spec, path = read_pretrained_state(tmp_path)
    assert path.name == "pretrain.pt"
    fine = SASRec(SASRecConfig(loss="bce", **arch))
    assert load_pretrained(fine, weights).complete
    split = ds.leave_one_out(max_len=20)
    result = Trainer(fine, split, TrainConfig(epochs=12, batch_size=64, lr=3e-3, patience=0, seed=0)).fit()
    pop = popularity_baseline(split)["metrics"]["rank_topk"]
    assert result.test_full["NDCG@10"] > 1.5 * pop["NDCG@10"]
