"""Trainer, checkpoints (resume after a real kill), CLI and the popularity baseline."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.train import TrainConfig, Trainer, load_checkpoint

from helpers import shared_dataset

TINY = ["--data", "synthetic", "--synthetic-users", "300", "--synthetic-items", "150", "--hidden-size", "16",
        "--num-layers", "1", "--max-len", "20", "--batch-size", "64", "--patience", "0", "--sampled-negatives", "20"]


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "seqrec.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow  # minutes on 2 loaded cores; `make test-fast` leaves it out
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    epochs = ["--epochs", "8"]
    full = _cli("train", *TINY, *epochs, "--out", str(tmp_path / "full"))
    out, err = full.communicate(timeout=300)
    assert full.returncode == 0, err

    killed = _cli("train", *TINY, *epochs, "--out", str(tmp_path / "killed"))
    log = tmp_path / "killed" / "history.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    done = len(log.read_text().splitlines())
    assert 3 <= done < 8, "the kill must land mid-run"

    resumed = _cli("train", *TINY, *epochs, "--out", str(tmp_path / "killed"), "--resume")
    out2, err2 = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err2
    resumed_after = int(re.search(r"resumed .* after epoch (\d+)", err2).group(1))
    assert resumed_after in (done, done + 1)  # the kill may land between checkpoint and log
    a = json.loads((tmp_path / "full" / "result.json").read_text())
    b = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert a["test_full"] == b["test_full"] and a["test_sampled"] == b["test_sampled"]
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    assert out == out2  # the printed tables too


def test_cli_train_prints_tables_and_evaluate_reproduces_them(tmp_path):
    out = tmp_path / "run"
    import io
    from contextlib import redirect_stderr, redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--loss", "ce"]) == 0
    text = buf.getvalue()
    assert "test, full ranking" in text and "test, sampled" in text
    assert "ranking=full (target vs all items); history items excluded (target kept); tie rule: ties count against the model" in text
    assert "ranking=sampled (target vs 20 negatives, seed 42)" in text
    assert "NDCG@20" in text and "HR@1" in text
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "valid" in json.loads(lines[0])
    buf2 = io.StringIO()
    with redirect_stdout(buf2):
        assert main(["evaluate", "--checkpoint", str(out)]) == 0
    header, tables = buf2.getvalue().split("\n", 1)
    assert header == "sasrec after 2 of 2 epochs: weights of the best epoch " \
        f"{json.loads((out / 'result.json').read_text())['best_epoch']} by valid NDCG@20"
    assert tables.strip() == text.split("\n", 1)[1].strip()
    # on data with another catalogue: a clear error, not an embedding's IndexError
    other = tmp_path / "other.txt"
    other.write_text("1 1 2 3 4\n2 2 3 4 5\n")
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["evaluate", "--checkpoint", str(out), "--data", str(other)]) == 2
    assert re.search(r"the model was trained on \d+ items, the data \(.*other.txt\) has 5; evaluate it on its "
                     r"own dataset", err.getvalue())


def test_evaluate_says_when_the_run_is_unfinished(tmp_path, capsys, monkeypatch):
    class Stop(Exception):
        pass

    def stop_after_first(record):
        raise Stop

    # A run killed after its first epoch of three: what a still-running run looks like.
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, on_epoch=None: fit(self, on_epoch=stop_after_first))
    out = tmp_path / "run"
    with pytest.raises(Stop):
        main(["train", *TINY, "--epochs", "3", "--out", str(out), "--no-progress"])
    monkeypatch.undo()
    assert not (out / "result.json").exists()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    assert capsys.readouterr().out.startswith(
        "sasrec after 1 of 3 epochs (unfinished run): weights of the best epoch 1 by valid NDCG@20\n")


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\nx 4\n")
    assert main(["data", "stats", "--data", str(bad)]) == 2
    assert "bad.txt:2: field 'user'" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none")]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--model", "nope"])
    capsys.readouterr()
    # a device this torch cannot use: one line, before any model is built or trained
    assert main(["train", *TINY, "--epochs", "1", "--device", "nonsense", "--out", str(tmp_path / "d")]) == 2
    assert "seqrec train: error: --device nonsense: not usable with this torch" in capsys.readouterr().err
    assert not (tmp_path / "d" / "checkpoint.pt").exists()
    if not torch.cuda.is_available():
        assert main(["pretrain", "--data", "synthetic", "--device", "cuda", "--out", str(tmp_path / "p")]) == 2
        assert "seqrec pretrain: error: --device cuda: not usable with this torch" in capsys.readouterr().err


def test_data_stats_with_baseline(capsys):
    from seqrec.eval.baselines import popularity_baseline

    assert main(["data", "stats", "--data", "synthetic", "--synthetic-users", "300", "--baseline"]) == 0
    out = capsys.readouterr().out
    ds = synthetic(num_users=300, num_items=600)
    stats = ds.stats()
    lengths = ds.lengths
    q1, q2, q3 = np.quantile(lengths, [0.25, 0.5, 0.75])
    assert re.search(r"^ +users  300$", out, re.M) and re.search(r"^ +items  600$", out, re.M)
    assert re.search(rf"^ +interactions  {stats['interactions']:,}$", out, re.M)
    assert (f"sequence length  mean {lengths.mean():.1f}, min {lengths.min()}, quartiles {q1:g} / {q2:g} / {q3:g}, "
            f"max {lengths.max()}") in out
    assert f"density  {100 * stats['density']:.3g}% of user-item pairs" in out
    assert re.search(r"attribute field  (category|brand): \d+ values", out)
    assert re.search(r"^ +category: \d+ values", out, re.M) or re.search(r"^ +brand: \d+ values", out, re.M)
    # no unrounded float anywhere: at most 4 decimals
    assert not re.search(r"\d\.\d{5,}", out), out
    # the popularity baseline, once, with its protocol, equal to the API's figures
    assert out.count("popularity baseline") == 1 and "rank_topk" not in out and "NumPy" not in out
    table = out[out.index("popularity baseline"):].splitlines()
    assert table[1].startswith("  protocol: split=leave-one-out") and "ranking=full" in table[1]
    names, values = table[2].split(), [float(v) for v in table[3].split()]
    expected = popularity_baseline(ds.leave_one_out(max_len=50))["metrics"]["rank_topk"]
    assert names == list(expected) and values == pytest.approx([round(expected[k], 4) for k in names], abs=1e-4)


@pytest.mark.slow  # minutes on 2 loaded cores; `make test-fast` leaves it out
def test_trained_sasrec_beats_popularity_on_synthetic():
    from seqrec.eval.baselines import popularity_baseline

    ds = synthetic(num_users=600, num_items=200, seed=0)
    split = ds.leave_one_out(max_len=20)
    torch.manual_seed(0)
    model = build_model("sasrec", num_items=ds.num_items, max_len=20, hidden_size=32, num_layers=1, num_heads=1,
                        hidden_dropout=0.2, attention_dropout=0.2, loss="ce")
    trainer = Trainer(model, split, TrainConfig(epochs=15, batch_size=64, lr=3e-3, patience=0, seed=0))
    result = trainer.fit()
    pop = popularity_baseline(split)["metrics"]["rank_topk"]
    assert result.test_full["NDCG@10"] > 1.5 * pop["NDCG@10"]
    assert result.test_full["HR@10"] > pop["HR@10"] + 0.05


def test_resume_refuses_a_different_run(tmp_path):
    ds = synthetic(num_users=120, num_items=60, seed=2)
    split = ds.leave_one_out(max_len=10)

    def trainer(config: TrainConfig, hidden: int = 8) -> Trainer:
        torch.manual_seed(0)
        model = build_model("sasrec", num_items=ds.num_items, max_len=10, hidden_size=hidden, num_layers=1,
                            num_heads=1)
        spec = {"name": "sasrec", "config": {"hidden_size": hidden}}
        return Trainer(model, split, config, out_dir=tmp_path, model_spec=spec)

    base = dict(batch_size=64, patience=0, sampled_negatives=10)
    trainer(TrainConfig(epochs=1, **base)).fit()
    longer = trainer(TrainConfig(epochs=3, **{**base, "patience": 5}))  # length and patience may change
    assert longer.resume() and longer.epoch == 1
    with pytest.raises(ValueError, match=r"differs in metric, valid_ranking \(metric: 'NDCG@20' in the checkpoint"):
        trainer(TrainConfig(epochs=3, **base, metric="HR@1", valid_ranking="sampled")).resume()
    with pytest.raises(ValueError, match="differs in lr"):
        trainer(TrainConfig(epochs=3, **base, lr=0.01)).resume()
    with pytest.raises(ValueError, match="differs in model config"):
        trainer(TrainConfig(epochs=3, **base), hidden=16).resume()


def test_resume_after_a_config_field_was_added(tmp_path):
    """A checkpoint written before a model config field existed holds no value for it: the
    run resumes when that field is at its default (the behaviour it was trained with) and
    is refused, naming the field, when it is not."""
    ds = synthetic(num_users=120, num_items=60, seed=2)
    split = ds.leave_one_out(max_len=10)
    old_config = dict(num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=1, num_heads=1)

    def trainer(config: dict) -> Trainer:
        model = build_model("sasrec", **config)
        return Trainer(model, split, TrainConfig(epochs=2, batch_size=64, patience=0, sampled_negatives=10),
                       out_dir=tmp_path, model_spec={"name": "sasrec", "config": config})

    first = trainer(old_config)
    first.config.epochs = 1
    first.fit()
    assert trainer({**old_config, "hidden_act": "gelu"}).resume()  # the default: the same model
    with pytest.raises(ValueError, match=r"differs in model config \(hidden_act: 'gelu' in the checkpoint, "
                                         r"'relu' now\)"):
        trainer({**old_config, "hidden_act": "relu"}).resume()


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable seqrec checkpoint"):
        load_checkpoint(tmp_path)


def test_selection_by_sampled_validation():
    """valid_ranking="sampled": the epoch log holds sampled validation metrics and the best
    epoch is the argmax of the chosen one among them."""
    ds = synthetic(num_users=200, num_items=120, seed=1)
    split = ds.leave_one_out(max_len=15)
    torch.manual_seed(0)
    model = build_model("sasrec", num_items=ds.num_items, max_len=15, hidden_size=16, num_layers=1, num_heads=1,
                        loss="bce")
    cfg = TrainConfig(epochs=4, batch_size=64, lr=3e-3, patience=0, seed=0, valid_ranking="sampled",
                      metric="HR@1", sampled_negatives=20)
    trainer = Trainer(model, split, cfg)
    result = trainer.fit()
    valids = [r["valid"] for r in result.history]
    assert all("HR@1" in v for v in valids)  # the sampled protocol's report (full ranking has no @1 here)
    assert result.best_epoch == 1 + max(range(len(valids)), key=lambda i: (valids[i]["HR@1"], -i))
    assert trainer.evaluate("valid", "sampled") == result.best_valid  # the best state was restored
    with pytest.raises(ValueError, match="one of"):
        TrainConfig(metric="HR@1")  # full-ranking validation reports no @1 by default


def test_catalogue_too_small_for_the_sampled_protocol(tmp_path, capsys):
    """With fewer unseen items than sampled_negatives the sampled protocol cannot run: the
    trainer says so before training; sampled validation is refused outright, otherwise
    training goes on and the sampled test is reported as not computed, with the reason."""
    ds = synthetic(num_users=60, num_items=40, seed=0)
    split = ds.leave_one_out(max_len=10)
    # The check must match the sampler: some user has fewer than 35 unseen items, none fewer than 5.
    unseen = [ds.num_items - len(set(ds.items[ds.indptr[u]:ds.indptr[u + 1]].tolist())) for u in range(ds.num_users)]
    assert min(unseen) < 35 and min(unseen) >= 5

    def trainer(**cfg) -> Trainer:
        model = build_model("sasrec", num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=1, num_heads=1)
        return Trainer(model, split, TrainConfig(epochs=1, batch_size=32, **cfg), out_dir=tmp_path / "run")

    with pytest.raises(ValueError, match=r"sampled validation cannot run: user \d+ has only \d+ unseen items, "
                                         r"fewer than the 35 negatives .*--sampled-negatives"):
        trainer(sampled_negatives=35, valid_ranking="sampled", metric="MRR")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()

    with pytest.warns(UserWarning, match="the sampled protocol will be skipped"):
        short = trainer(sampled_negatives=35)
    result = short.fit()
    assert result.test_sampled == {} and result.protocol_sampled.startswith("not computed: user ")
    assert result.test_full  # the full ranking is still reported
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["test_sampled"] == {} and saved["protocol_sampled"] == result.protocol_sampled
    with pytest.raises(ValueError, match="the sampled protocol cannot run"):
        short.evaluate("test", "sampled")

    fits = trainer(sampled_negatives=5)  # every user has 5 unseen items: no warning, metrics as usual
    assert fits.sampled_problem is None and "HR@1" in fits.evaluate("test", "sampled")

    args = ["train", "--data", "synthetic", "--synthetic-users", "60", "--synthetic-items", "40", "--epochs", "1",
            "--hidden-size", "8", "--num-layers", "1", "--max-len", "10", "--no-progress"]
    assert main([*args, "--sampled-negatives", "35", "--out", str(tmp_path / "cli")]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"test, sampled\n  protocol: not computed: user \d+ has only", out)
    # said before training, in the commands' own words rather than as a Python source line
    assert re.match(r"seqrec train: warning: the sampled protocol will be skipped: user \d+ has only", err)
    with pytest.raises(SystemExit, match="2"):  # refused while parsing, naming the option
        main([*args, "--sampled-negatives", "0", "--out", str(tmp_path / "zero")])
    assert "argument --sampled-negatives: must be >= 1, got 0" in capsys.readouterr().err


def test_train_config_validation():
    with pytest.raises(ValueError, match="TrainConfig.metric must be one of"):
        TrainConfig(metric="AUC")
    with pytest.raises(ValueError, match="valid_ranking must be 'full' or 'sampled'"):
        TrainConfig(valid_ranking="popularity")
    with pytest.raises(ValueError, match="TrainConfig.batch_size must be >= 1"):
        TrainConfig(batch_size=0)


def test_popularity_baseline_on_beauty_matches_numpy():
    from seqrec.data import load_dataset
    from seqrec.eval.baselines import popularity_baseline

    split = load_dataset(str(shared_dataset("Beauty"))).leave_one_out()
    res = popularity_baseline(split)
    assert res["ranks_equal"]
    assert res["metrics"]["rank_topk"] == res["metrics"]["NumPy reference"]


@pytest.mark.parametrize("model, extra, weights", [
    ("dss", ["--num-heads", "1"], {"seq2item": 1.0, "seq2seq": 0.1}),
    ("difsr", ["--attributes", "category", "--num-heads", "2", "--attribute-weight", "3"],
     {"item": 1.0, "attr:category": 3.0}),
])
def test_history_records_the_mean_of_each_loss_term(tmp_path, capsys, model, extra, weights):
    out = tmp_path / model
    assert main(["train", "--model", model, *TINY, *extra, "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    assert "epoch   2 loss" in capsys.readouterr().err
    for record in (json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()):
        terms = record["loss_terms"]
        assert set(weights) <= set(terms) and "loss" not in terms
        # Means of a weighted sum: the epoch loss is the same weighted sum of the term means.
        expected = sum(w * terms[name] for name, w in weights.items())
        assert record["loss"] == pytest.approx(expected, rel=1e-5)


def test_loss_terms_without_a_loss_output_is_a_clear_error():
    class NoTotal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = build_model("sasrec", num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=1,
                                     num_heads=1, loss="ce")

        def loss_terms(self, batch):
            return {"item": self.inner.loss(batch)}

    ds = synthetic(num_users=50, num_items=30, seed=0)
    config = TrainConfig(epochs=1, batch_size=16, sampled_negatives=5)
    trainer = Trainer(NoTotal(), ds.leave_one_out(max_len=10), config)
    with pytest.raises(TypeError, match="NoTotal.loss_terms must return a seqrec.models.LossOutput"):
        trainer.fit()


# ---------------------------------------------------------------- trainer and split options (issue 26)
def test_cli_trainer_options_reach_the_run(tmp_path, capsys):
    from seqrec.utils import read_jsonl

    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--scheduler", "cosine", "--warmup-steps", "2",
                 "--clip-grad-norm", "1.5", "--accumulate", "2", "--autocast", "bf16", "--logger", "jsonl,csv",
                 "--metrics", "Precision", "Coverage"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "Precision@5" in printed and "Coverage@20" in printed
    assert re.search(r"epoch   2 loss .* lr 0 \(", captured.err)  # the epoch line shows the rate
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["scheduler"], train["warmup_steps"], train["grad_clip"], train["accumulate"], train["autocast"],
            train["metrics"]) == ("cosine", 2, 1.5, 2, "bf16", ["Precision", "Coverage"])
    history = read_jsonl(out / "history.jsonl")
    assert history[-1]["lr"] == 0.0  # cosine ends at 0
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "loss", "lr", "valid/NDCG@20", "valid/Precision@5", "valid/Coverage@20"} <= set(header)
    assert main(["evaluate", "--checkpoint", str(out)]) == 0  # a bf16-trained run evaluates on the CPU
    assert "Precision@5" in capsys.readouterr().out


def _timed_atomic(tmp_path):
    """The tiny synthetic data as RecBole atomic files with timestamps (a global clock)."""
    ds = synthetic(num_users=300, num_items=150, seed=0)
    rng = np.random.default_rng(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(ds.num_users):
        seq = ds.sequence(u)
        times = np.sort(rng.uniform(0, 1000, len(seq)))
        lines += [f"u{u}\ti{int(i)}\t{t:.3f}" for i, t in zip(seq, times)]
    path = tmp_path / "timed" / "timed.inter"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("split_args,name", [
    (["--split", "temporal", "--temporal-cut", "0.7"], "temporal (cut t="),
    (["--split", "ratio", "--ratios", "0.6", "0.2", "0.2"], "ratio 0.6/0.2/0.2"),
    (["--negatives", "popularity"], "leave-one-out"),
])
def test_cli_split_and_negatives_options(tmp_path, capsys, split_args, name):
    data = _timed_atomic(tmp_path)
    tiny = [a if a != "synthetic" else str(data) for a in TINY]
    out = tmp_path / "run"
    assert main(["train", *tiny, "--epochs", "1", "--out", str(out), *split_args]) == 0
    captured = capsys.readouterr()
    assert f"split: {name}" in captured.err  # the split's card
    result = json.loads((out / "result.json").read_text())
    assert name in result["protocol_full"] and name in result["protocol_sampled"]
    popular = "--negatives" in split_args
    assert ("popularity-sampled negatives" in result["protocol_sampled"]) == popular
    assert main(["evaluate", "--checkpoint", str(out)]) == 0  # rebuilds the same split
    printed = capsys.readouterr().out
    assert name in printed
    assert f"{result['test_full']['NDCG@20']:.4f}" in printed and f"{result['test_sampled']['MRR']:.4f}" in printed
    # resuming with another split is refused
    assert main(["train", *tiny, "--epochs", "2", "--out", str(out), "--resume", "--split", "leave-one-out"]) == 2
    assert "differs in split" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--autocast", "fp16"], "autocast 'fp16' needs a CUDA device"),
    (["--logger", "jsonl,wandb"], "argument --logger: unknown logger"),
    (["--scheduler", "linear"], "argument --scheduler: invalid choice"),
    (["--warmup-steps", "-1"], "argument --warmup-steps: must be >= 0"),
    (["--accumulate", "0"], "argument --accumulate: must be >= 1"),
    (["--clip-grad-norm", "0"], "argument --clip-grad-norm: must be > 0"),
    (["--lr-gamma", "1.5"], r"argument --lr-gamma: must lie in \(0, 1\]"),
    (["--ratios", "0.5", "0.2", "0.2", "--split", "ratio"], "--ratios must sum to 1"),
    (["--ratios", "0.6", "0.2", "0.2"], "--ratios applies to --split ratio"),
    (["--temporal-cut", "0.8"], "--temporal-cut applies to --split temporal"),
    (["--split", "temporal", "--temporal-cut", "0.9", "0.8"], "must come after the first"),
    (["--split", "temporal", "--temporal-cut", "1.2"], "argument --temporal-cut: must lie strictly between 0 and 1"),
    (["--split", "temporal"], "a temporal split needs timestamps"),
    (["--metrics", "Gini", "--metric", "Gini@20"], "TrainConfig.metric must be one of"),
    (["--metrics", "Coverage", "--valid-ranking", "sampled", "--metric", "MRR"], "full-ranking top-K lists"),
])
def test_cli_refuses_bad_trainer_options(capsys, args, message):
    with pytest.raises(SystemExit) if "argument" in message else contextlib.nullcontext():
        code = main(["train", *TINY, "--epochs", "1", *args])
        assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_logger_tensorboard_without_tensorboard_is_a_clear_error(capsys, monkeypatch):
    import seqrec.train.callbacks as callbacks

    def missing():
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install 'seqrec[tensorboard]'")

    monkeypatch.setattr(callbacks, "_summary_writer_class", missing)
    assert main(["train", *TINY, "--epochs", "1", "--logger", "jsonl,tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "seqrec train: error: --logger jsonl,tensorboard: TensorBoard logging needs the tensorboard package" in err
