"""Early stopping, eval_every > 1 and resume, pinned with weights (issue 28).

A "kill" here stops ``fit`` from its ``on_epoch`` callback, which runs after the epoch's
checkpoint is written: what a SIGKILL between two epochs leaves (test_train_cli kills a
real process). The resumed run must end with the same history, best epoch and weights,
bit for bit, as the uninterrupted one.
"""
from __future__ import annotations

import pytest
import torch

from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.models.difsr import attribute_config
from seqrec.train import TrainConfig, Trainer


class Killed(Exception):
    pass


def _dataset():
    return synthetic(num_users=48, num_items=40, num_intents=3, seed=11)


def _model(name, ds):
    small = dict(num_items=ds.num_items, max_len=12, hidden_size=8)
    if name == "sasrec":
        return build_model("sasrec", **small, num_layers=1, num_heads=2, loss="ce")
    if name == "difsr":
        return build_model("difsr", **small, num_layers=1, num_heads=2, inner_size=8, attribute_sizes=4,
                           fusion="gate", attributes=ds, **attribute_config(ds, ["category", "brand"]))
    return build_model("dss", **small, num_layers=1, num_intentions=2)


def _run(name, out_dir, config, kill_after=None):
    ds = _dataset()
    torch.manual_seed(0)  # model init
    trainer = Trainer(_model(name, ds), ds.leave_one_out(max_len=12), config, out_dir=out_dir)

    def on_epoch(record):
        if kill_after is not None and record["epoch"] == kill_after:
            raise Killed

    if kill_after is not None:
        with pytest.raises(Killed):
            trainer.fit(on_epoch=on_epoch)
        ds = _dataset()
        torch.manual_seed(99)  # a different init: everything must come from the checkpoint
        trainer = Trainer(_model(name, ds), ds.leave_one_out(max_len=12), config, out_dir=out_dir)
        assert trainer.resume() and trainer.epoch == kill_after
    result = trainer.fit()
    return result, trainer


def _config(**kw):
    base = dict(epochs=12, batch_size=16, lr=5e-2, sampled_negatives=5, ks=(5, 10), metric="NDCG@10", seed=3,
                progress=False)
    return TrainConfig(**{**base, **kw})


def _same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_early_stopping_with_eval_every_and_a_kill_inside_the_patience_window(tmp_path):
    config = _config(eval_every=2, patience=2, epochs=40, lr=0.2)
    full, full_trainer = _run("sasrec", tmp_path / "full", config)
    evaluated = [r["epoch"] for r in full.history if "valid" in r]
    assert evaluated == list(range(2, 2 * len(evaluated) + 1, 2))  # every second epoch only
    last = full.history[-1]["epoch"]
    assert last < 40, "early stopping must end the run before the epoch budget"
    # stopped exactly `patience` evaluations after the best one
    assert last == full.best_epoch + 2 * config.patience
    # a kill after the first evaluation without improvement, i.e. inside the patience window
    kill = full.best_epoch + 2
    resumed, resumed_trainer = _run("sasrec", tmp_path / "killed", config, kill_after=kill)
    assert resumed_trainer.bad_evals == full_trainer.bad_evals == config.patience
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in resumed.history] == \
        [{k: v for k, v in r.items() if "seconds" not in k} for r in full.history]
    assert resumed.best_epoch == full.best_epoch and resumed.test_full == full.test_full
    _same_weights(resumed_trainer, full_trainer)


@pytest.mark.parametrize("name", ["difsr", "dss"])
def test_kill_and_resume_gives_the_same_weights(tmp_path, name):
    """DIF-SR (attribute tables re-attached after the restart) and DSS (which draws its
    split points from torch's RNG) resume bit for bit."""
    config = _config(epochs=3, patience=0)
    full, full_trainer = _run(name, tmp_path / "full", config)
    resumed, resumed_trainer = _run(name, tmp_path / "killed", config, kill_after=1)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    _same_weights(resumed_trainer, full_trainer)
    assert resumed.test_full == full.test_full


def _counting_callback():
    from seqrec.train import Callback

    class StepCounter(Callback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, trainer, step, loss):
            self.steps += 1

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]

    return StepCounter()


def _run_with(out_dir, config, kill_after=None, loss="ce", **trainer_kw):
    """_run, for SASRec, with Trainer keyword arguments (built afresh for each Trainer)."""
    def make():
        ds = _dataset()
        kw = {k: v() for k, v in trainer_kw.items()}
        model = build_model("sasrec", num_items=ds.num_items, max_len=12, hidden_size=8, num_layers=1, num_heads=2,
                            loss=loss)
        return Trainer(model, ds.leave_one_out(max_len=12), config, out_dir=out_dir, **kw)

    torch.manual_seed(0)
    trainer = make()
    if kill_after is not None:
        def on_epoch(record):
            if record["epoch"] == kill_after:
                raise Killed
        with pytest.raises(Killed):
            trainer.fit(on_epoch=on_epoch)
        torch.manual_seed(99)
        trainer = make()
        assert trainer.resume() and trainer.epoch == kill_after
    return trainer.fit(), trainer


@pytest.mark.parametrize("settings", [
    dict(scheduler="cosine", warmup_steps=3, accumulate=2, grad_clip=0.5),
    dict(scheduler="step", lr_step_epochs=1, lr_gamma=0.5, accumulate=3, autocast="bf16"),
], ids=["cosine-accumulate-clip", "step-accumulate-bf16"])
def test_kill_and_resume_with_schedule_accumulation_and_autocast_is_bit_identical(tmp_path, settings):
    """The schedule's position (and the rate it gives the next step) comes back from the
    checkpoint; accumulation groups end with each epoch, so nothing half-accumulated is lost."""
    # BCE under bf16: the softmax CE loss's backward is not bf16-autocast-safe yet
    counter = {"callbacks": lambda: [_counting_callback()], "loss": "bce" if "autocast" in settings else "ce"}
    config = _config(epochs=4, patience=0, **settings)
    full, full_trainer = _run_with(tmp_path / "full", config, **counter)
    resumed, resumed_trainer = _run_with(tmp_path / "killed", config, kill_after=2, **counter)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    assert len({r["lr"] for r in full.history}) == 4  # the rate really moved
    _same_weights(resumed_trainer, full_trainer)
    assert resumed.test_full == full.test_full
    assert resumed_trainer.scheduler.state_dict() == full_trainer.scheduler.state_dict()
    assert resumed_trainer.global_step == full_trainer.global_step == 4 * full_trainer.steps_per_epoch
    # the user callback's state came back too
    assert resumed_trainer.callbacks[-1].steps == full_trainer.callbacks[-1].steps == full_trainer.global_step


def test_kill_and_resume_with_an_injected_optimizer_and_scheduler(tmp_path):
    import functools

    config = _config(epochs=3, patience=0)
    kw = {"optimizer": lambda: functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9),
          "scheduler": lambda: (lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9))}
    full, full_trainer = _run_with(tmp_path / "full", config, **kw)
    resumed, resumed_trainer = _run_with(tmp_path / "killed", config, kill_after=1, **kw)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    _same_weights(resumed_trainer, full_trainer)
    # another optimizer class cannot continue that run
    ds = _dataset()
    other = Trainer(_model("sasrec", ds), ds.leave_one_out(max_len=12), config, out_dir=tmp_path / "killed",
                    scheduler=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9))
    with pytest.raises(ValueError, match="the checkpoint's optimizer is SGD, this trainer's is Adam"):
        other.resume()


def test_resume_refuses_a_changed_schedule(tmp_path):
    config = _config(epochs=2, patience=0, scheduler="cosine")
    _run_with(tmp_path, config)
    ds = _dataset()
    longer = _config(epochs=4, patience=0, scheduler="cosine")
    with pytest.raises(ValueError, match="cannot resume, the run differs in epochs"):
        Trainer(_model("sasrec", ds), ds.leave_one_out(max_len=12), longer, out_dir=tmp_path).resume()
    with pytest.raises(ValueError, match="differs in scheduler"):
        Trainer(_model("sasrec", ds), ds.leave_one_out(max_len=12), _config(epochs=2, patience=0),
                out_dir=tmp_path).resume()
    # without a schedule, more epochs may follow (as before)
    plain = tmp_path / "plain"
    _run_with(plain, _config(epochs=2, patience=0))
    assert Trainer(_model("sasrec", ds), ds.leave_one_out(max_len=12), _config(epochs=4, patience=0),
                   out_dir=plain).resume()
