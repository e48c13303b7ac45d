"""Issue 29's recipe: ``seqrec train --model composed --preset best`` builds the documented
composition and budget, explicit flags override it, and reproduce.py's ``best`` suite
runs the recipe and rows that each change one component of it."""
from __future__ import annotations

import re
import sys

import pytest

from helpers import REPO_ROOT
from seqrec.cli import main
from seqrec.models.composed import PRESETS

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import reproduce  # noqa: E402

DATA = ["--data", "synthetic", "--synthetic-users", "60", "--synthetic-items", "40", "--max-len", "10"]


class _Built(Exception):
    def __init__(self, model_spec, config):
        super().__init__("built")
        self.model_spec, self.config = model_spec, config


class _Stop:
    """Stands in for the Trainer: records what the CLI built, trains nothing."""

    def __init__(self, model, data, config, *, model_spec=None, **options):
        raise _Built(model_spec, config)


@pytest.fixture
def built(monkeypatch, tmp_path):
    import seqrec.train

    monkeypatch.setattr(seqrec.train, "Trainer", _Stop)

    def build(*argv):
        with pytest.raises(_Built) as caught:
            main(["train", *DATA, *argv, "--no-progress", "--out", str(tmp_path / "run")])
        return caught.value.model_spec["config"], caught.value.config
    return build


def test_preset_best_is_the_documented_composition_and_budget(built):
    config, train = built("--model", "composed", "--preset", "best", "--attributes", "category")
    preset = PRESETS["best"]
    assert {k: config[k] for k in preset.model} == preset.model
    assert config["attribute_fields"] == ["category"] or tuple(config["attribute_fields"]) == ("category",)
    assert (config["side_information"], config["interests"], config["loss"]) == ("difsr", "dss", "ce")
    assert (train.epochs, train.patience, train.lr, train.batch_size) == (200, 30, 1e-3, 256)


def test_flags_override_the_preset_budget_and_parts(built):
    config, train = built("--model", "composed", "--preset", "best", "--side-information", "none",
                          "--epochs", "7", "--patience", "2", "--lr", "0.01")
    assert (config["side_information"], config["interests"]) == ("none", "dss")
    assert (train.epochs, train.patience, train.lr) == (7, 2, 0.01)


def test_without_a_preset_the_budget_is_the_trainers_default(built):
    _, train = built("--model", "composed")
    assert (train.epochs, train.patience) == (200, 10)
    _, train = built("--model", "sasrec", "--patience", "0")
    assert (train.epochs, train.patience) == (200, 0)


@pytest.fixture
def pretrain_built(monkeypatch, tmp_path):
    import seqrec.train.pretrain

    monkeypatch.setattr(seqrec.train.pretrain, "Pretrainer", _Stop)

    def build(*argv):
        with pytest.raises(_Built) as caught:
            main(["pretrain", *DATA, *argv, "--no-progress", "--out", str(tmp_path / "pre")])
        return caught.value.model_spec["config"], caught.value.config
    return build


def test_pretrain_preset_best_is_the_suites_measured_pretraining(pretrain_built, tmp_path):
    """`seqrec pretrain --preset best`, the recipe's first stage, builds what suite best's
    S3-Rec pretraining row (whose fine-tunes the README quotes) runs: the same model
    config and pretraining settings."""
    runs = {r.name: r for r in reproduce.suite_runs("best", tmp_path)}
    for ds in ("beauty", "lastfm"):
        flags = _flags(runs[f"{ds}_s3rec_aapseq_pre20"].args)
        for drop in ("--data", "--out", "--progress"):
            flags.pop(drop, None)
        measured = pretrain_built(*[a for pair in flags.items() for a in pair])
        assert pretrain_built("--preset", "best") == measured, ds
    config, settings = measured
    assert (settings.epochs, settings.batch_size, settings.samples) == (20, 100, "prefixes")
    assert config["aap_input"] == "sequence" and config["hidden_size"] == 64 and config["num_layers"] == 2
    # and without the preset, the authors' 150 epochs
    assert pretrain_built()[1].epochs == 150


def test_pretrain_flags_override_the_preset(pretrain_built):
    config, settings = pretrain_built("--preset", "best", "--epochs", "3", "--aap-input", "item")
    assert (settings.epochs, config["aap_input"]) == (3, "item")


def test_the_recipes_two_commands_run_as_printed(tmp_path, capsys):
    """`seqrec pretrain --preset best` prints the recipe's second command; run as printed
    it fine-tunes the composed model with every encoder tensor loaded."""
    pre = tmp_path / "pre"
    assert main(["pretrain", *DATA, "--preset", "best", "--epochs", "1", "--no-progress", "--out", str(pre)]) == 0
    hint = capsys.readouterr().out.split("fine-tune with: seqrec ")[1].split("\n")[0].split()
    assert hint[:5] == ["train", "--model", "composed", "--preset", "best"]
    assert main([*hint, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "best")]) == 0
    err = capsys.readouterr().err
    loaded = re.search(r"loaded \d+ tensors \((\d+) of the (\d+) encoder tensors\)", err)
    assert loaded and loaded.group(1) == loaded.group(2), err


def test_a_pretraining_preset_setting_that_would_be_ignored_is_refused(monkeypatch, tmp_path, capsys):
    from seqrec.models.config import Preset
    from seqrec.models.s3rec import PRESETS as S3REC_PRESETS

    monkeypatch.setitem(S3REC_PRESETS, "best", Preset(train=dict(epochs=20, lr=0.01)))
    rc = main(["pretrain", *DATA, "--preset", "best", "--no-progress", "--out", str(tmp_path / "p")])
    assert rc == 2
    assert "--preset best: pretraining presets name only ['batch_size', 'epochs', 'samples'], not ['lr']" \
        in capsys.readouterr().err
    assert not (tmp_path / "p" / "pretrain.pt").exists()


def test_preset_best_without_attributes_names_the_flag(tmp_path, capsys):
    rc = main(["train", *DATA, "--model", "composed", "--preset", "best", "--epochs", "1", "--no-progress",
               "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "--attributes" in capsys.readouterr().err


def _flags(args: tuple[str, ...]) -> dict:
    pairs, i = {}, 0
    while i < len(args):
        pairs[args[i]] = args[i + 1]
        i += 2
    return pairs


def test_best_suite_rows_change_one_component_each(tmp_path):
    runs = {r.name: r for r in reproduce.suite_runs("best", tmp_path)}
    for ds, label in (("beauty", "Beauty best"), ("lastfm", "LastFM best")):
        pre = runs[f"{ds}_s3rec_aapseq_pre20"]
        assert pre.command == "pretrain"
        assert _flags(pre.args)["--aap-input"] == "sequence" and _flags(pre.args)["--epochs"] == "20"
        for suffix in ("", "_s1", "_s2"):
            # the recipe: the preset fine-tuned from the S3-Rec pretraining (--init, after it)
            recipe = runs[f"{ds}_best_s3pre{suffix}"]
            assert recipe.group == label and recipe.needs == pre.name
            flags = _flags(recipe.args)
            assert flags.pop("--init") == str(tmp_path / pre.name)
            assert flags["--preset"] == "best" and flags["--model"] == "composed"
            # without the pretraining: the preset alone
            assert _flags(runs[f"{ds}_best{suffix}"].args) == flags
            assert runs[f"{ds}_best{suffix}"].needs is None
            for name, _, change in reproduce.BEST_ABLATIONS:
                changed = _flags(change)
                # the recipe with the named change, and without the attributes exactly when
                # it drops the fusion that reads them
                expected = {**flags, **changed}
                if changed.get("--side-information") == "none":
                    expected.pop("--attributes")
                row = runs[f"{ds}_best_s3pre_{name}{suffix}"]
                assert _flags(row.args) == {**expected, "--init": str(tmp_path / pre.name)}, name
                assert row.needs == pre.name and row.group.startswith(label), name
                # the preset alone's ablation: on LastFM only (it ran before the pretraining
                # joined the recipe)
                alone = runs.get(f"{ds}_best_{name}{suffix}")
                assert (alone is not None) == (ds == "lastfm"), name
                if alone is not None:
                    assert _flags(alone.args) == expected, name
    # every row of a group differs only in its seed
    groups = {}
    for run in runs.values():
        if run.command == "train":
            groups.setdefault(run.group, []).append({k: v for k, v in _flags(run.args).items() if k != "--seed"})
    assert all(members.count(members[0]) == len(members) == 3 for members in groups.values()), groups


def test_every_best_suite_command_parses_into_a_model(built, tmp_path):
    """Each row's options (the data swapped for the synthetic set) build a model."""
    for run in reproduce.suite_runs("best", tmp_path):
        if run.command != "train":  # S3-Rec's pretraining: the s3rec-aap-input suite's run
            continue
        flags = _flags(run.args)
        flags.pop("--data")
        flags.pop("--init", None)  # the pretraining's weights (test_init_transfer loads such)
        if "--attributes" in flags:
            flags["--attributes"] = "category"
        argv = [x for kv in flags.items() for x in kv]
        config, _ = built(*argv)
        assert config["side_information"] in ("none", "difsr"), run.name
