"""DSS as a pretraining stage (issue 29 item 2, the DSSRec reading): sliding windows, the
random split, the two objectives against float64 formulas, the confidence cut, a few
pretraining steps, fine-tuning initialised from it, and the command line."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.data import SequenceDataset, synthetic
from seqrec.models import DSS, DSSConfig, SASRec, SASRecConfig, load_pretrained, read_pretrained_state
from seqrec.models.dss import fold_pretraining_scale, pretrain_split
from seqrec.models.losses import confident_info_nce, max_intention_nll
from seqrec.models.pretrained import encoder_tensor_names
from seqrec.train import PretrainConfig, Pretrainer, PretrainSamples, Trainer


def _dataset(sequences: list[list[int]]) -> SequenceDataset:
    num_items = max(max(s) for s in sequences)
    indptr = np.cumsum([0] + [len(s) for s in sequences])
    return SequenceDataset(indptr, np.concatenate([np.asarray(s) for s in sequences]),
                           [f"u{i}" for i in range(len(sequences))], [""] + [f"i{i}" for i in range(1, num_items + 1)])


# ---------------------------------------------------------------- samples


def test_windows_cut_each_training_part_with_half_max_len_steps():
    # user 0: 14 items -> training part 1..12 (13, 14 held out); max_len 5, step 2:
    # windows end at the part's end and step back by 2, the last one starts at item 1.
    # user 1: training part 20, 21, 22 (one window); user 2: part of 1 item (left out).
    ds = _dataset([list(range(1, 15)), [20, 21, 22, 23, 24], [30, 31, 32]])
    samples = PretrainSamples(ds, max_len=5, kind="windows", window_step=0.5)
    rows = [[i for i in row if i] for row in samples.batch(np.arange(len(samples))).tolist()]
    assert sorted(rows) == sorted([[8, 9, 10, 11, 12], [6, 7, 8, 9, 10], [4, 5, 6, 7, 8], [2, 3, 4, 5, 6],
                                   [1, 2, 3, 4, 5], [20, 21, 22]])
    # a step that lands on the first item does not repeat it: part 1..9, max_len 5, step 2
    ds = _dataset([list(range(1, 12))])
    rows = [[i for i in row if i] for row in PretrainSamples(ds, 5, "windows").batch(np.arange(3)).tolist()]
    assert sorted(rows) == sorted([[5, 6, 7, 8, 9], [3, 4, 5, 6, 7], [1, 2, 3, 4, 5]])
    assert len(PretrainSamples(ds, 5, "windows")) == 3
    # step fraction 1: non-overlapping windows from the end, then the one at the start
    rows = [[i for i in row if i] for row in PretrainSamples(ds, 4, "windows", 1.0).batch(np.arange(3)).tolist()]
    assert sorted(rows) == sorted([[6, 7, 8, 9], [2, 3, 4, 5], [1, 2, 3, 4]])
    with pytest.raises(ValueError, match="window_step must be a number in"):
        PretrainConfig(samples="windows", window_step=0.0)
    with pytest.raises(ValueError, match="needs max_len >= 2"):
        PretrainSamples(ds, 1, "windows")
    with pytest.raises(ValueError, match="no user has the 4 interactions"):
        PretrainSamples(_dataset([[1, 2, 3], [4, 5, 6]]), 5, "windows")


def test_split_reverses_the_future_and_names_the_next_item():
    seq = torch.tensor([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 9, 10], [0, 0, 0, 0, 11, 12]])
    out = pretrain_split(seq, torch.tensor([1, 4, 1]))
    # input seq[:t] (left-padded), future seq[t:] reversed (seq[t] last), next seq[t]
    assert out.inputs.tolist() == [[0, 0, 0, 5], [1, 2, 3, 4], [0, 0, 0, 11]]
    assert out.future.tolist() == [[8, 7, 6], [0, 10, 9], [0, 0, 12]]
    assert out.next_item.tolist() == [6, 9, 12]
    with pytest.raises(ValueError, match="split must lie in 1..L-1"):
        pretrain_split(seq, torch.tensor([4, 1, 1]))


def test_corrupt_draws_the_split_from_the_batch_seed():
    model = DSS(DSSConfig(num_items=20, max_len=6, hidden_size=8, num_layers=1))
    seq = torch.tensor([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 9, 10], [0, 0, 0, 0, 11, 12]])
    a, b = model.corrupt(seq, seed=7), model.corrupt(seq, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    lengths = [4, 6, 2]
    seen = set()
    for seed in range(200):
        out = model.corrupt(seq, seed=seed)
        t = (out.inputs != 0).sum(1).tolist()
        assert all(1 <= ti <= L - 1 for ti, L in zip(t, lengths))
        assert ((out.future != 0).sum(1) + (out.inputs != 0).sum(1)).tolist() == lengths
        seen.update((row, ti) for row, ti in enumerate(t))
    assert seen == {(r, t) for r, L in enumerate(lengths) for t in range(1, L)}  # every split point occurs
    with pytest.raises(ValueError, match=r"at least 2 items.*rows \[1\]"):
        model.corrupt(torch.tensor([[0, 3, 4], [0, 0, 5]]), seed=0)


# ---------------------------------------------------------------- objectives


def _reference_seq2item(phi, items, scale):
    phi, items = phi.double(), items.double()
    b, k, _ = phi.shape
    out = []
    for r in range(b):
        num = max(math.exp(scale * float(phi[r, j] @ items[r])) for j in range(k))
        den = sum(math.exp(scale * float(phi[r, j] @ items[c])) for j in range(k) for c in range(b))
        out.append(-math.log(num / den))
    return torch.tensor(out, dtype=torch.float64)


def _reference_seq2seq(past, future, scale):
    past, future = past.double(), future.double()
    b, k, _ = past.shape
    out = torch.zeros(b, k, dtype=torch.float64)
    for r in range(b):
        for j in range(k):
            num = math.exp(scale * float(past[r, j] @ future[r, j]))
            den = sum(math.exp(scale * float(past[r, j] @ future[c, i])) for c in range(b) for i in range(k))
            out[r, j] = -math.log(num / den)
    return out


def test_objectives_match_a_float64_reference_of_the_formula():
    torch.manual_seed(0)
    b, k, d = 5, 3, 4
    phi, items = torch.randn(b, k, d), torch.randn(b, d)
    scale = 1 / math.sqrt(d)
    torch.testing.assert_close(max_intention_nll(phi, items, scale).double(), _reference_seq2item(phi, items, scale),
                               rtol=1e-5, atol=1e-5)
    past, future = torch.randn(b, k, d), torch.randn(b, k, d)
    loss, keep = confident_info_nce(past, future, scale, 0.5)
    want = _reference_seq2seq(past, future, scale)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
    # gradients against finite differences, in float64
    assert torch.autograd.gradcheck(lambda p, i: max_intention_nll(p, i, scale),
                                    (phi.double().requires_grad_(), items.double().requires_grad_()))
    assert torch.autograd.gradcheck(lambda p, f: confident_info_nce(p, f, scale, 1.0)[0],
                                    (past.double().requires_grad_(), future.double().requires_grad_()))


def test_confidence_cut_keeps_the_losses_at_or_below_the_kth_smallest():
    torch.manual_seed(1)
    b, k, d = 6, 4, 8
    past, future = torch.randn(b, k, d), torch.randn(b, k, d)
    loss, keep = confident_info_nce(past, future, 0.3, 0.5)
    flat = loss.flatten().tolist()
    kth = sorted(flat)[math.floor(0.5 * b * k) - 1]  # floor(lambda B K) = 12th smallest
    assert keep.flatten().tolist() == [v <= kth for v in flat]
    assert int(keep.sum()) == 12
    # ties at the threshold are all kept; lambda so small that floor is 0 keeps the smallest
    tied = torch.ones(2, 2, 3)
    assert bool(confident_info_nce(tied, tied, 1.0, 0.5)[1].all())
    _, few = confident_info_nce(past, future, 0.3, 0.01)
    assert int(few.sum()) == 1 and float(loss[few]) == min(flat)


def test_pretrain_losses_are_the_batch_sums_over_b_of_the_objectives():
    torch.manual_seed(0)
    model = DSS(DSSConfig(num_items=30, max_len=8, hidden_size=8, num_layers=1, num_intentions=3,
                          hidden_dropout=0.0, attention_dropout=0.0, seq2seq_weight=0.7, confidence_lambda=0.5)).eval()
    seq = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 3], [1, 2, 3, 4, 9, 10, 11, 12], [0, 0, 0, 0, 0, 0, 11, 12],
                        [0, 0, 0, 4, 8, 15, 16, 23]])
    batch = model.corrupt(seq, seed=3)
    losses = model.pretrain_losses(batch)
    phi_past = model.encode(batch.inputs).interests
    phi_future = model.encode(batch.future, future=True).interests
    scale = 1 / math.sqrt(8)
    s2i = _reference_seq2item(phi_past.detach(), model.embedding.item.weight[batch.next_item].detach(), scale)
    torch.testing.assert_close(losses["seq2item"].double(), s2i.sum() / 4, rtol=1e-5, atol=1e-6)
    s2s = _reference_seq2seq(phi_past.detach(), phi_future.detach(), scale).flatten()
    kept = s2s <= s2s.sort().values[math.floor(0.5 * 4 * 3) - 1]
    torch.testing.assert_close(losses["seq2seq"].double(), (s2s * kept).sum() / 4, rtol=1e-5, atol=1e-6)
    assert int(losses["kept"]) == int(kept.sum())
    torch.testing.assert_close(model.weighted_loss(losses), losses["seq2item"] + 0.7 * losses["seq2seq"])


# ---------------------------------------------------------------- pretraining and fine-tuning


def _pretrainer(tmp_path, epochs=3, **config):
    ds = synthetic(num_users=150, num_items=60, num_intents=3, mean_length=14, min_length=4, max_length=30, seed=2)
    torch.manual_seed(0)
    model = DSS(DSSConfig(num_items=ds.num_items, max_len=10, hidden_size=16, num_layers=1, seq2seq_weight=1.0,
                          **config))
    return ds, Pretrainer(model, ds, PretrainConfig(epochs=epochs, batch_size=64, lr=3e-3, samples="windows", seed=4,
                                                    progress=False, keep_every=1), out_dir=tmp_path,
                          model_spec={"name": "dss", "config": {}})


def test_pretraining_decreases_the_loss_and_keeps_snapshots(tmp_path):
    _, trainer = _pretrainer(tmp_path)
    history = trainer.fit()
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["seq2item"] < history[0]["seq2item"]
    assert all(h["kept"] > 0 for h in history)
    assert (tmp_path / "pretrain.pt").exists() and (tmp_path / "pretrain-epoch2.pt").exists()


def test_pretraining_resumes_exactly(tmp_path):
    _, full = _pretrainer(tmp_path / "full", epochs=2)
    full.fit()
    _, first = _pretrainer(tmp_path / "cut", epochs=1)
    first.fit()
    _, second = _pretrainer(tmp_path / "cut", epochs=2)
    assert second.resume()
    second.fit()
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name


@pytest.mark.parametrize("target", ["dss", "sasrec"])
def test_finetuning_takes_the_whole_pretrained_encoder(tmp_path, target):
    ds, trainer = _pretrainer(tmp_path, epochs=1)
    trainer.fit()
    weights, spec, _ = read_pretrained_state(tmp_path)
    arch = dict(num_items=ds.num_items, max_len=10, hidden_size=16, num_layers=1)
    fine = DSS(DSSConfig(**arch)) if target == "dss" else SASRec(SASRecConfig(num_heads=1, **arch))
    report = load_pretrained(fine, weights)
    assert set(encoder_tensor_names(fine)) <= set(report.loaded) and report.encoder_complete
    if target == "dss":  # the intention heads too: every tensor
        assert report.complete and set(report.loaded) == set(fine.state_dict())
    else:
        assert "prototypes" in report.unused
    for name in report.loaded:
        assert torch.equal(fine.state_dict()[name], weights[name]), name


def test_cli_pretrain_dss_then_finetune_dss_and_sasrec(tmp_path, capsys):
    common = ["--data", "synthetic", "--synthetic-users", "80", "--synthetic-items", "40", "--max-len", "10"]
    pre = tmp_path / "pre"
    assert main(["pretrain", "--model", "dss", *common, "--epochs", "2", "--hidden-size", "16", "--num-layers", "1",
                 "--num-intentions", "3", "--keep-every", "1", "--out", str(pre), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "pretraining samples (windows)" in err and "seq2seq" in err and "batches of 256" in err
    state = torch.load(pre / "pretrain.pt", weights_only=False)
    assert state["model_spec"]["config"]["seq2seq_weight"] == 1.0  # DSSRec's weights, not joint DSS's 0.1
    assert state["pretrain_config"]["samples"] == "windows" and state["pretrain_config"]["epochs"] == 2
    for model in ("dss", "sasrec"):
        out = tmp_path / model
        assert main(["train", "--model", model, *common, "--epochs", "1", "--init", str(pre / "pretrain-epoch1.pt"),
                     "--out", str(out), "--no-progress"]) == 0
        err = capsys.readouterr().err
        loaded = "loaded 20 tensors (20 of the 20 encoder" if model == "sasrec" else "(20 of the 20 encoder tensors)"
        assert loaded in err, err
        finetuned = torch.load(out / "checkpoint.pt", weights_only=False)["model_spec"]
        assert finetuned["config"]["hidden_size"] == 16 and finetuned["config"]["num_layers"] == 1
        if model == "dss":
            assert finetuned["config"]["num_intentions"] == 3
            assert "not loaded (kept at initialisation): none" in err


def test_folded_scale_makes_plain_dot_products_the_pretrainings_scaled_ones(tmp_path):
    """fold_pretraining_scale: the fine-tune model loaded from the folded weights has
    intention vectors 1/sqrt(D) of the pretrained model's, so its unscaled item logits are
    the pretraining's <phi, h> / sqrt(D); the other tensors and the given state are untouched."""
    ds, trainer = _pretrainer(tmp_path, epochs=1)
    trainer.fit()
    weights, _, _ = read_pretrained_state(tmp_path)
    d = trainer.model.config.hidden_size
    folded = fold_pretraining_scale(weights, d)
    assert folded is not weights and set(folded) == set(weights)
    for name, value in weights.items():
        if name.startswith("out_norm."):
            torch.testing.assert_close(folded[name], value / math.sqrt(d), rtol=1e-6, atol=0)
            assert not torch.equal(folded[name], value)
        else:
            assert folded[name] is value, name
    plain, scaled = DSS(trainer.model.config), DSS(trainer.model.config)
    assert load_pretrained(plain, weights).complete and load_pretrained(scaled, folded).complete
    plain.eval(), scaled.eval()
    seq = torch.tensor([[0, 0, 3, 7, 9, 2], [4, 8, 1, 5, 6, 11]])
    items = plain.embedding.item.weight
    with torch.no_grad():
        pretraining_logits = plain.interests(seq) @ items.t() / math.sqrt(d)
        torch.testing.assert_close(scaled.interests(seq) @ items.t(), pretraining_logits)
    with pytest.raises(ValueError, match="out_norm.weight is missing"):
        fold_pretraining_scale({k: v for k, v in weights.items() if k != "out_norm.weight"}, d)
    with pytest.raises(ValueError, match=r"out_norm.weight is of shape \(16,\); a DSS pretraining of hidden size 8"):
        fold_pretraining_scale(weights, 8)


def test_cli_init_fold_scale(tmp_path, capsys, monkeypatch):
    """--init-fold-scale: the fine-tune starts from the DSS pretraining's out_norm times
    1/sqrt(16) (without it, from the pretraining's own), the run records the factor, and
    every other combination is refused by name."""
    common = ["--data", "synthetic", "--synthetic-users", "80", "--synthetic-items", "40", "--max-len", "10"]
    pre = tmp_path / "pre"
    assert main(["pretrain", "--model", "dss", *common, "--epochs", "1", "--hidden-size", "16", "--num-layers", "1",
                 "--out", str(pre), "--no-progress"]) == 0
    pretrained = torch.load(pre / "pretrain.pt", weights_only=False)["model"]
    started_from = {}  # out_norm's affine as training starts
    fit = Trainer.fit

    def recording_fit(self, **kwargs):
        started_from[self.out_dir.name] = (self.model.out_norm.weight.detach().clone(),
                                           self.model.out_norm.bias.detach().clone())
        return fit(self, **kwargs)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    finetune = ["train", *common, "--epochs", "1", "--no-progress", "--model", "dss", "--preset", "seq2item-only"]
    for name, flags in (("folded", ["--init-fold-scale"]), ("as-saved", [])):
        assert main([*finetune, "--init", str(pre), *flags, "--out", str(tmp_path / name)]) == 0
    factor = {"folded": 0.25, "as-saved": 1.0}
    for name, (weight, bias) in started_from.items():
        torch.testing.assert_close(weight, pretrained["out_norm.weight"] * factor[name])
        torch.testing.assert_close(bias, pretrained["out_norm.bias"] * factor[name])
        init = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model_spec"]["init"]
        assert init.get("folded_scale") == (0.25 if name == "folded" else None) and init["missing"] == []
    assert set(started_from) == {"folded", "as-saved"}
    out = tmp_path / "folded"
    capsys.readouterr()
    refusals = [
        (["--model", "dss", "--preset", "seq2item-only", "--init-fold-scale"], "give --init too"),
        (["--model", "dss", "--init", str(pre), "--init-fold-scale"], r"seq2seq term \(weight 0.1\)"),
        (["--model", "sasrec", "--loss", "ce", "--init", str(pre), "--init-fold-scale"], "SASRec has no out_norm"),
        (["--model", "dss", "--preset", "seq2item-only", "--init", str(out), "--init-fold-scale"],
         "a 'dss' training checkpoint"),
    ]
    for i, (args, message) in enumerate(refusals):
        assert main(["train", *common, "--epochs", "1", "--no-progress", *args,
                     "--out", str(tmp_path / f"refused{i}")]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), (args, err)
        assert not (tmp_path / f"refused{i}" / "checkpoint.pt").exists()


def test_cli_pretrain_refuses_the_other_models_options(tmp_path, capsys):
    base = ["pretrain", "--data", "synthetic", "--synthetic-users", "40", "--synthetic-items", "30"]
    assert main([*base, "--model", "dss", "--mask-p", "0.3", "--out", str(tmp_path / "a")]) == 2
    assert "--mask-p is an option of --model s3rec, not of --model dss" in capsys.readouterr().err
    assert main([*base, "--model", "dss", "--num-heads", "2", "--out", str(tmp_path / "b")]) == 2
    assert "single-head" in capsys.readouterr().err
    assert main([*base, "--model", "s3rec", "--num-intentions", "3", "--out", str(tmp_path / "c")]) == 2
    assert "--num-intentions is an option of --model dss, not of --model s3rec" in capsys.readouterr().err
    assert main([*base, "--model", "dss", "--no-aap", "--out", str(tmp_path / "d")]) == 2
    assert "--no-aap: S3-Rec options, not of --model dss" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # pretraining has no next-item loss: DSSConfig.loss is no flag of it
        main([*base, "--model", "dss", "--loss", "sampled", "--out", str(tmp_path / "e")])
    assert "unrecognized arguments: --loss sampled" in capsys.readouterr().err
    assert main([*base, "--model", "dss", "--preset", "paper", "--out", str(tmp_path / "f")]) == 2
    assert "preset 'paper' is for --model s3rec, not dss" in capsys.readouterr().err


def test_distributed_dss_pretraining_is_refused(monkeypatch, tmp_path):
    """[DDP] the ranks' rows of a DSS batch do not add up to one process's losses (batch
    means, a confidence cut over the whole batch): refused, not silently different."""
    import seqrec.train.pretrain as pretrain

    # A world of 2 whose group the caller owns (the refused Pretrainer leaves it alone).
    ddp = pretrain.Distributed(rank=0, world_size=2, local_rank=0, backend="gloo", device="cpu")
    monkeypatch.setattr(pretrain.Distributed, "setup", staticmethod(lambda *args: ddp))
    with pytest.raises(ValueError, match="distributed pretraining is S3-Rec's; DSS's pretraining losses"):
        _pretrainer(tmp_path)
