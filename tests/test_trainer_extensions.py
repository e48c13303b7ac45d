"""The trainer's extension points (issue 26): injected optimizer and scheduler, the
config's schedules, gradient clipping and accumulation, autocast, callbacks, loggers.

Weights are checked against a plain loop written here (same batches, same arithmetic),
so each setting is shown to do what it says, not only to run."""
from __future__ import annotations

import csv
import functools
import math

import numpy as np
import pytest
import torch

from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.train import (Callback, CSVLogger, JSONLinesLogger, LambdaCallback, TrainConfig, Trainer,
                          make_loggers)
from seqrec.train.callbacks import flatten_record
from seqrec.train.optim import schedule_factor
from seqrec.utils import read_jsonl


def _dataset():
    return synthetic(num_users=46, num_items=40, num_intents=3, seed=5)


def _model(ds, seed=0, loss="ce"):
    torch.manual_seed(seed)
    # no dropout, softmax CE (or BCE with the engine's negatives): the loss is a pure
    # function of the weights and the batch
    return build_model("sasrec", num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=1, num_heads=2,
                       loss=loss, hidden_dropout=0.0, attention_dropout=0.0)


def _config(**kw):
    base = dict(epochs=2, batch_size=10, lr=0.05, sampled_negatives=5, ks=(5, 10), metric="NDCG@10", seed=1,
                patience=0, progress=False)
    return TrainConfig(**{**base, **kw})


def _manual_sgd(ds, config, lr, accumulate, clip=None, epochs=1):
    """A plain loop: SGD over groups of ``accumulate`` batches, each loss divided by its
    group's size, the global gradient norm clipped to ``clip``."""
    model = _model(ds)
    split = ds.leave_one_out(max_len=10)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = split.num_train_batches(config.batch_size)
    for epoch in range(epochs):
        batches = list(split.train_batches(config.batch_size, seed=config.seed, epoch=epoch))
        for first in range(0, n, accumulate):
            group = batches[first:first + accumulate]
            opt.zero_grad()
            for batch in group:
                (model.loss_terms(batch).loss / len(group)).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return model


def _same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


# ---------------------------------------------------------------------- optimizer
@pytest.mark.parametrize("accumulate,clip", [(1, None), (3, None), (2, 0.05)])
def test_injected_optimizer_accumulation_and_clipping_match_a_plain_loop(accumulate, clip):
    ds = _dataset()
    config = _config(epochs=1, accumulate=accumulate, grad_clip=clip)
    split = ds.leave_one_out(max_len=10)
    assert split.num_train_batches(10) == 5  # groups of 3: (3, 2); of 2: (2, 2, 1)
    steps = []
    trainer = Trainer(_model(ds), split, config, optimizer=functools.partial(torch.optim.SGD, lr=0.3),
                      callbacks=[LambdaCallback(on_step_end=lambda t, step, loss: steps.append((step, loss)))])
    assert type(trainer.optimizer) is torch.optim.SGD
    trainer.fit()
    expected = _manual_sgd(ds, config, 0.3, accumulate, clip)
    _same_weights(trainer.model, expected)
    assert [s for s, _ in steps] == list(range(1, -(-5 // accumulate) + 1))
    assert trainer.global_step == len(steps) == trainer.steps_per_epoch
    assert all(math.isfinite(loss) for _, loss in steps)


def test_clipping_changes_the_weights():
    """The clip of the test above is active: without it the weights differ."""
    ds = _dataset()
    config = _config(epochs=1, accumulate=2)
    a = _manual_sgd(ds, config, 0.3, 2, clip=0.05)
    b = _manual_sgd(ds, config, 0.3, 2, clip=None)
    assert not torch.equal(a.embedding.item.weight, b.embedding.item.weight)


def test_default_optimizer_is_fused_adam_and_an_optimizer_object_is_used_as_given():
    ds = _dataset()
    split = ds.leave_one_out(max_len=10)
    trainer = Trainer(_model(ds), split, _config())
    assert type(trainer.optimizer) is torch.optim.Adam and trainer.optimizer.defaults["fused"]
    assert trainer.scheduler is None
    model = _model(ds)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert Trainer(model, split, _config(), optimizer=opt).optimizer is opt


def test_bad_optimizers_and_schedulers_are_refused():
    ds = _dataset()
    split = ds.leave_one_out(max_len=10)
    other = _model(ds, seed=1)
    with pytest.raises(ValueError, match="updates none of the model's parameters"):
        Trainer(_model(ds), split, _config(), optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="returned dict, not a torch.optim.Optimizer"):
        Trainer(_model(ds), split, _config(), optimizer=lambda params: {})
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer or a factory"):
        Trainer(_model(ds), split, _config(), optimizer="adam")
    with pytest.raises(ValueError, match="built over another optimizer"):
        foreign = torch.optim.SGD(other.parameters(), lr=0.1)
        Trainer(_model(ds), split, _config(), scheduler=torch.optim.lr_scheduler.StepLR(foreign, 1))
    with pytest.raises(ValueError, match="keep one of them"):
        Trainer(_model(ds), split, _config(scheduler="cosine"),
                scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(TypeError, match="ReduceLROnPlateau"):
        Trainer(_model(ds), split, _config(), scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(TypeError, match="Callback objects"):
        Trainer(_model(ds), split, _config(), callbacks=[print])


# ---------------------------------------------------------------------- schedules
def test_schedule_factor_formula():
    f = functools.partial(schedule_factor, warmup_steps=4, total_steps=14, step_every=3, gamma=0.5)
    assert [f(s, kind="none") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [f(s, kind="cosine") for s in range(16)]
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]
    assert cosine[4] == 1.0 and cosine[9] == pytest.approx(0.5) and cosine[14] == cosine[15] == 0.0
    assert np.all(np.diff(cosine[3:]) <= 0)
    assert [f(s, kind="step") for s in range(4, 11)] == [0.5, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125]


@pytest.mark.parametrize("kind", ["cosine", "step"])
def test_config_schedules_set_the_rate_of_every_step(kind):
    ds = _dataset()
    split = ds.leave_one_out(max_len=10)
    lrs = []
    config = _config(epochs=3, scheduler=kind, warmup_steps=2, lr_step_epochs=1, lr_gamma=0.5, accumulate=2)
    trainer = Trainer(_model(ds), split, config, callbacks=[
        LambdaCallback(on_step_end=lambda t, step, loss: lrs.append(t.optimizer.param_groups[0]["lr"]))])
    result = trainer.fit()
    per_epoch = trainer.steps_per_epoch
    assert per_epoch == 3 and len(lrs) == 9
    # the rate after step s is the one step s + 1 uses
    expected = [0.05 * schedule_factor(s, kind=kind, warmup_steps=2, total_steps=9, step_every=per_epoch,
                                       gamma=0.5) for s in range(1, 10)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert [r["lr"] for r in result.history] == pytest.approx([lrs[2], lrs[5], lrs[8]])
    if kind == "cosine":
        assert lrs[-1] == 0.0


def test_injected_scheduler_steps_per_optimizer_step():
    ds = _dataset()
    lrs = []
    trainer = Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=1),
                      optimizer=functools.partial(torch.optim.SGD, lr=0.8),
                      scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
                      callbacks=[LambdaCallback(on_step_end=lambda t, s, l: lrs.append(t.scheduler.get_last_lr()[0]))])
    trainer.fit()
    assert lrs == [0.4, 0.2, 0.1, 0.05, 0.025]


# ---------------------------------------------------------------------- autocast
def test_bf16_autocast_on_cpu_wraps_the_training_forward_only():
    ds = _dataset()
    # Softmax CE, the default loss (bf16-autocast-safe: tests/test_autocast.py)
    trainer = Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=1, autocast="bf16"))
    seen = []
    loss_terms, score = trainer.model.loss_terms, trainer.model.score

    def spy_loss(batch):
        seen.append(("train", torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return loss_terms(batch)

    def spy_score(*a, **k):
        seen.append(("eval", torch.is_autocast_enabled("cpu"), None))
        return score(*a, **k)

    trainer.model.loss_terms, trainer.model.score = spy_loss, spy_score
    result = trainer.fit()
    assert {s for s in seen if s[0] == "train"} == {("train", True, torch.bfloat16)}
    assert {s for s in seen if s[0] == "eval"} == {("eval", False, None)}
    assert math.isfinite(result.history[0]["loss"])
    plain = Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=1)).fit()
    assert result.history[0]["loss"] != plain.history[0]["loss"]  # bf16 arithmetic really ran


def test_fp16_autocast_is_refused_on_cpu():
    with pytest.raises(ValueError, match="autocast 'fp16' needs a CUDA device.*use 'bf16' on the CPU"):
        _config(autocast="fp16")
    with pytest.raises(ValueError, match="autocast must be one of"):
        _config(autocast="fp8")


@pytest.mark.cuda
def test_fp16_autocast_with_a_scaler_on_cuda_resumes_its_scaler(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ds = _dataset()
    config = _config(epochs=2, autocast="fp16", device="cuda")

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    first = Trainer(_model(ds, loss="bce"), ds.leave_one_out(max_len=10), config, out_dir=tmp_path)
    assert first.precision.scaler is not None
    with pytest.raises(Killed):
        first.fit(on_epoch=kill)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["grad_scaler"]
    assert saved == first.precision.scaler.state_dict() and saved["scale"] > 0
    second = Trainer(_model(ds, loss="bce"), ds.leave_one_out(max_len=10), config, out_dir=tmp_path)
    assert second.resume() and second.precision.scaler.state_dict() == saved
    result = second.fit()
    assert all(math.isfinite(r["loss"]) for r in result.history)


# ---------------------------------------------------------------------- callbacks
class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append(("train_start", trainer.epoch))

    def on_step_end(self, trainer, step, loss):
        self.calls.append(("step", step))

    def on_eval_end(self, trainer, stage, ranking, metrics):
        self.calls.append(("eval", stage, ranking, trainer.epoch, tuple(metrics)))

    def on_epoch_end(self, trainer, record):
        assert record is trainer.history[-1]
        self.calls.append(("epoch", record["epoch"]))

    def on_train_end(self, trainer, result):
        self.calls.append(("train_end", result.best_epoch))


def test_callbacks_see_every_hook_in_order(tmp_path):
    ds = _dataset()
    recorder, seen_by_on_epoch = Recorder(), []

    def on_epoch(record):  # the legacy hook runs last, after the checkpoint is written
        from seqrec.train import load_checkpoint
        seen_by_on_epoch.append((record["epoch"], load_checkpoint(tmp_path)["epoch"]))

    trainer = Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=2, eval_every=2), out_dir=tmp_path,
                      callbacks=[recorder])
    result = trainer.fit(on_epoch=on_epoch)
    names = [c[0] for c in recorder.calls]
    assert names == ["train_start", *["step"] * 5, "epoch", *["step"] * 5, "eval", "epoch", "eval", "eval",
                     "train_end"]
    evals = [c for c in recorder.calls if c[0] == "eval"]
    assert evals[0][1:4] == ("valid", "full", 2) and evals[1][1:3] == ("test", "full")
    assert evals[2][1:3] == ("test", "sampled")
    assert [c[1] for c in recorder.calls if c[0] == "step"] == list(range(1, 11))
    assert recorder.calls[-1] == ("train_end", result.best_epoch) and result.best_epoch == 2
    assert seen_by_on_epoch == [(1, 1), (2, 2)]


def test_lambda_callback_checks_its_hooks():
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_batch_end=print)
    with pytest.raises(TypeError, match="on_step_end must be callable"):
        LambdaCallback(on_step_end=3)


def test_early_stopping_is_a_callback_that_stops_the_loop():
    ds = _dataset()
    trainer = Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=40, patience=1, lr=0.5))
    result = trainer.fit()
    assert trainer.should_stop and len(result.history) < 40
    assert result.history[-1]["epoch"] == trainer.early_stopping.best_epoch + 1 == result.best_epoch + 1
    assert trainer.bad_evals == trainer.early_stopping.bad_evals == 1


# ---------------------------------------------------------------------- loggers
def test_default_history_jsonl_keeps_its_format_and_csv_logger_writes_the_same(tmp_path):
    ds = _dataset()
    Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=2, metrics=("Precision", "Gini")),
            out_dir=tmp_path / "a").fit()
    records = read_jsonl(tmp_path / "a" / "history.jsonl")  # checksums checked
    assert [set(r) for r in records] == [{"epoch", "loss", "train_seconds", "valid", "eval_seconds"}] * 2
    assert "Precision@5" in records[0]["valid"] and "Gini@10" in records[0]["valid"]
    assert not (tmp_path / "a" / "history.csv").exists()  # not a default

    Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=2), out_dir=tmp_path / "b",
            loggers=[JSONLinesLogger(), CSVLogger()]).fit()
    history = read_jsonl(tmp_path / "b" / "history.jsonl")
    with open(tmp_path / "b" / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row, record in zip(rows, history):
        flat = flatten_record(record)
        assert row.keys() == flat.keys()
        assert {k: float(v) for k, v in row.items()} == pytest.approx({k: float(v) for k, v in flat.items()},
                                                                       rel=1e-15)

    Trainer(_model(ds), ds.leave_one_out(max_len=10), _config(epochs=1), out_dir=tmp_path / "c", loggers=[]).fit()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["checkpoint.pt", "result.json"]


def test_make_loggers():
    assert [type(x).__name__ for x in make_loggers("jsonl,csv")] == ["JSONLinesLogger", "CSVLogger"]
    assert make_loggers("none") == [] and make_loggers("") == []
    with pytest.raises(ValueError, match=r"unknown logger\(s\) \['wandb'\]"):
        make_loggers("jsonl,wandb")
    with pytest.raises(ValueError, match="more than once"):
        make_loggers(["csv", "csv"])


def test_tensorboard_logger_writes_the_history_once_per_epoch_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra seqrec[tensorboard] is not installed here")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from seqrec.train import TensorBoardLogger

    class Killed(Exception):
        pass

    def kill(record):
        if record["epoch"] == 2:
            raise Killed

    ds = _dataset()
    config = _config(epochs=3, scheduler="cosine")
    trainer = Trainer(_model(ds), ds.leave_one_out(max_len=10), config, out_dir=tmp_path,
                      loggers=[JSONLinesLogger(), TensorBoardLogger()])
    with pytest.raises(Killed):
        trainer.fit(on_epoch=kill)
    assert trainer.loggers[1].writer is None  # closed on the way out
    trainer = Trainer(_model(ds), ds.leave_one_out(max_len=10), config, out_dir=tmp_path,
                      loggers=[JSONLinesLogger(), TensorBoardLogger()])
    assert trainer.resume()
    result = trainer.fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "valid/NDCG@10", "train_seconds"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in result.history], rel=1e-6)
    assert [e.value for e in events.Scalars("valid/NDCG@10")] == \
        pytest.approx([r["valid"]["NDCG@10"] for r in result.history], rel=1e-6)


def test_loggers_are_flushed_and_closed_when_fit_raises_and_the_error_propagates(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra seqrec[tensorboard] is not installed here")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from seqrec.train import TensorBoardLogger

    class Boom(RuntimeError):
        pass

    ds = _dataset()
    model = _model(ds)
    loss_terms, calls = model.loss_terms, []

    def exploding(batch):  # the 3rd batch of epoch 2 (5 batches per epoch)
        calls.append(1)
        if len(calls) == 8:
            raise Boom("loss exploded mid-epoch")
        return loss_terms(batch)

    model.loss_terms = exploding
    tensorboard = TensorBoardLogger()
    closed, seen = [], []

    class Watch(Callback):
        def on_train_start(self, trainer):  # the writer exists from here on: watch its close
            writer = tensorboard.writer
            close = writer.close
            writer.close = lambda: (closed.append(writer), close())[1]

        def on_exception(self, trainer, error):
            seen.append(error)

    trainer = Trainer(model, ds.leave_one_out(max_len=10), _config(epochs=3), out_dir=tmp_path,
                      loggers=[JSONLinesLogger(), CSVLogger(), tensorboard], callbacks=[Watch()])
    with pytest.raises(Boom, match="mid-epoch"):
        trainer.fit()
    assert len(calls) == 8 and len(closed) == 1 and tensorboard.writer is None
    assert len(seen) == 1 and isinstance(seen[0], Boom)
    # Every file holds the epoch that finished, readable now (written whole, closed).
    assert [r["epoch"] for r in read_jsonl(tmp_path / "history.jsonl")] == [1]
    with open(tmp_path / "history.csv", newline="") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1"]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1]


def test_a_failing_on_exception_hook_does_not_hide_the_training_error():
    class Boom(RuntimeError):
        pass

    class Broken(Callback):
        def on_exception(self, trainer, error):
            raise OSError("disk gone while closing a log")

    ds = _dataset()
    model = _model(ds)

    def exploding(batch):
        raise Boom("the training error")

    model.loss_terms = exploding
    closed = []
    trainer = Trainer(model, ds.leave_one_out(max_len=10), _config(epochs=1), loggers=[],
                      callbacks=[Broken(), LambdaCallback(on_exception=lambda t, e: closed.append(e))])
    with pytest.raises(Boom, match="the training error") as info:
        trainer.fit()
    assert len(closed) == 1  # the hooks after the failing one still ran
    assert any("disk gone" in note for note in getattr(info.value, "__notes__", []))


# ---------------------------------------------------------------------- README
def _readme_block(title: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example(tmp_path, monkeypatch, capsys):
    """The README's extension-point example, run as written (in a temporary folder)."""
    pytest.importorskip("tensorboard", reason="the optional extra seqrec[tensorboard] is not installed here")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_block("Trainer: extension points"), "README.md", "exec"), scope)
    result, trainer = scope["result"], scope["trainer"]
    assert type(trainer.optimizer) is torch.optim.AdamW
    assert [r["lr"] for r in result.history] == pytest.approx([3e-3 * 0.95 ** (3 * e) for e in (1, 2, 3)])
    assert trainer.steps_per_epoch == 3  # 5 batches of 64 users, accumulated in pairs
    out = capsys.readouterr().out
    assert out.count("epoch ") == 3 and f"lr {3e-3 * 0.95 ** 3:.2e}" in out
    assert len(read_jsonl(tmp_path / "runs/custom/history.jsonl")) == 3
    assert any((tmp_path / "runs/custom/tensorboard").iterdir())
