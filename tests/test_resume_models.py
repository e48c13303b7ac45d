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
