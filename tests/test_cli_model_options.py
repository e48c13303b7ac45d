"""The model options of `seqrec train` / `seqrec pretrain` pinned against values recorded
from the CLI before its model options were derived from the config fields (issue 28
item 3): for every model and every preset, the config (every field, as the run folder's
config.json and the checkpoint record it) and the training settings the model decides
(lr, batch size, negatives) that an argument vector produces, or the error it gets.

The expected values are literals in ``cli_model_options.json`` beside this file,
recorded by ``python tests/test_cli_model_options.py --record`` from the code of that
time; a changed default, a preset applied differently or a flag that changes meaning
fails here. A config field added later is checked against its config's default (its
flag, when not given, must not change the model).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from seqrec.cli import main

PINS = Path(__file__).with_name("cli_model_options.json")
DATA = ["--data", "synthetic", "--synthetic-users", "60", "--synthetic-items", "40", "--max-len", "10"]
TRAIN_KEYS = ("lr", "batch_size", "num_negatives")

# (case id, command, argv after the command); "{sasrec_run}" / "{pretrain_run}" / "{dss_run}"
# stand for the --init checkpoints the fixture writes.
CASES = [
    # SASRec: defaults, each option, options of other models.
    ("sasrec", "train", ["--model", "sasrec"]),
    ("sasrec-ce", "train", ["--model", "sasrec", "--loss", "ce"]),
    ("sasrec-sampled", "train", ["--model", "sasrec", "--loss", "sampled"]),
    ("sasrec-shape", "train", ["--model", "sasrec", "--hidden-size", "32", "--num-layers", "1", "--num-heads", "4",
                               "--dropout", "0.2"]),
    ("sasrec-dropouts", "train", ["--model", "sasrec", "--dropout", "0.2", "--attention-dropout", "0.1"]),
    ("sasrec-attention-dropout", "train", ["--model", "sasrec", "--attention-dropout", "0.1"]),
    ("sasrec-train", "train", ["--model", "sasrec", "--inner-size", "128", "--lr", "0.01", "--batch-size", "64",
                               "--num-negatives", "3"]),
    ("sasrec-bad-heads", "train", ["--model", "sasrec", "--hidden-size", "30", "--num-heads", "4"]),
    ("sasrec-preset-sine", "train", ["--model", "sasrec", "--preset", "small"]),
    ("sasrec-preset-difsr", "train", ["--model", "sasrec", "--preset", "difsr-beauty"]),
    ("sasrec-preset-unknown", "train", ["--model", "sasrec", "--preset", "nope"]),
    ("sasrec-fusion", "train", ["--model", "sasrec", "--fusion", "sum"]),
    ("sasrec-attributes", "train", ["--model", "sasrec", "--attributes", "category"]),
    ("sasrec-num-intentions", "train", ["--model", "sasrec", "--num-intentions", "3"]),
    ("sasrec-temperature", "train", ["--model", "sasrec", "--temperature", "0.3"]),
    ("sasrec-num-prototypes", "train", ["--model", "sasrec", "--num-prototypes", "10"]),
    ("sasrec-init", "train", ["--model", "sasrec", "--init", "{sasrec_run}"]),
    # (--init-partial: a 2-layer model from the 1-layer checkpoint loads what fits; strict
    # transfer, issue 29 item 1, refuses it otherwise.)
    ("sasrec-init-explicit", "train", ["--model", "sasrec", "--init", "{sasrec_run}", "--hidden-size", "16",
                                       "--num-layers", "2", "--num-heads", "2", "--inner-size", "64",
                                       "--init-partial"]),
    # S3-Rec fine-tuning: a causal SASRec from a pretraining checkpoint.
    ("s3rec-init", "train", ["--model", "s3rec", "--init", "{pretrain_run}"]),
    ("s3rec-init-inner", "train", ["--model", "s3rec", "--init", "{pretrain_run}", "--inner-size", "64",
                                   "--dropout", "0.1", "--loss", "ce"]),
    ("s3rec-init-preset", "train", ["--model", "s3rec", "--init", "{pretrain_run}", "--preset", "paper"]),
    # SINE and its presets.
    ("sine", "train", ["--model", "sine"]),
    ("sine-paper", "train", ["--model", "sine", "--preset", "paper"]),
    ("sine-small", "train", ["--model", "sine", "--preset", "small"]),
    ("sine-small-override", "train", ["--model", "sine", "--preset", "small", "--num-prototypes", "20",
                                      "--temperature", "0.5"]),
    ("sine-options", "train", ["--model", "sine", "--hidden-size", "32", "--dropout", "0.1", "--max-prefixes", "3",
                               "--merge", "max", "--intent-attention", "assigned", "--assign-temperature", "0.2",
                               "--reg-weight", "0", "--num-interests", "2", "--lr", "0.01", "--num-negatives", "5"]),
    ("sine-bad-interests", "train", ["--model", "sine", "--num-interests", "9", "--num-prototypes", "5"]),
    ("sine-preset-unknown", "train", ["--model", "sine", "--preset", "nope"]),
    ("sine-preset-dss", "train", ["--model", "sine", "--preset", "seq2item-only"]),
    ("sine-preset-difsr", "train", ["--model", "sine", "--preset", "difsr-beauty"]),
    ("sine-num-layers", "train", ["--model", "sine", "--num-layers", "3"]),
    ("sine-loss", "train", ["--model", "sine", "--loss", "ce"]),
    ("sine-attributes", "train", ["--model", "sine", "--attributes", "category"]),
    # DIF-SR, its preset and its side-information options.
    ("difsr", "train", ["--model", "difsr", "--attributes", "category"]),
    ("difsr-no-attributes", "train", ["--model", "difsr"]),
    ("difsr-beauty", "train", ["--model", "difsr", "--attributes", "category", "brand", "--preset", "difsr-beauty"]),
    ("difsr-beauty-dropout", "train", ["--model", "difsr", "--attributes", "category", "--preset", "difsr-beauty",
                                       "--dropout", "0.2"]),
    ("difsr-beauty-override", "train", ["--model", "difsr", "--attributes", "category", "--preset", "difsr-beauty",
                                        "--attention-dropout", "0.1", "--hidden-size", "64", "--num-heads", "4",
                                        "--lr", "0.001", "--batch-size", "32", "--loss", "bce", "--fusion", "sum",
                                        "--attribute-size", "8"]),
    ("difsr-options", "train", ["--model", "difsr", "--attributes", "category", "brand", "--attribute-size", "16",
                                "32", "--attribute-weight", "1", "2", "--fusion", "concat", "--pooling", "mean",
                                "--no-attribute-predictor", "--no-position-scores", "--fusion-sees-masked",
                                "--num-heads", "4", "--hidden-size", "64", "--inner-size", "32"]),
    ("difsr-scalars", "train", ["--model", "difsr", "--attributes", "category", "brand", "--attribute-size", "16",
                                "--attribute-weight", "5", "--dropout", "0.1", "--num-layers", "1"]),
    ("difsr-preset-unknown", "train", ["--model", "difsr", "--preset", "nope"]),
    ("difsr-preset-sine", "train", ["--model", "difsr", "--preset", "paper"]),
    ("difsr-temperature", "train", ["--model", "difsr", "--attributes", "category", "--temperature", "0.3"]),
    # DSS, its presets and its options.
    ("dss", "train", ["--model", "dss"]),
    ("dss-default", "train", ["--model", "dss", "--preset", "default"]),
    ("dss-seq2item-only", "train", ["--model", "dss", "--preset", "seq2item-only"]),
    ("dss-seq2item-only-override", "train", ["--model", "dss", "--preset", "seq2item-only", "--seq2seq-weight", "0.5"]),
    ("dss-sampled", "train", ["--model", "dss", "--loss", "sampled"]),
    ("dss-sampled-negatives", "train", ["--model", "dss", "--loss", "sampled", "--num-negatives", "7"]),
    ("dss-options", "train", ["--model", "dss", "--num-intentions", "3", "--temperature", "0.2",
                              "--seq2seq-temperature", "2", "--confidence-lambda", "1", "--beta", "noise",
                              "--hidden-size", "32", "--num-layers", "1", "--dropout", "0.1", "--lr", "0.01",
                              "--batch-size", "16"]),
    ("dss-bad-lambda", "train", ["--model", "dss", "--confidence-lambda", "0"]),
    ("dss-two-heads", "train", ["--model", "dss", "--num-heads", "2"]),
    ("dss-one-head", "train", ["--model", "dss", "--num-heads", "1"]),
    ("dss-attention-dropout", "train", ["--model", "dss", "--attention-dropout", "0.1"]),
    ("dss-inner-size", "train", ["--model", "dss", "--inner-size", "32"]),
    ("dss-preset-sine", "train", ["--model", "dss", "--preset", "small"]),
    ("dss-preset-unknown", "train", ["--model", "dss", "--preset", "nope"]),
    ("dss-fusion", "train", ["--model", "dss", "--fusion", "sum"]),
    ("dss-init", "train", ["--model", "dss", "--init", "{dss_run}"]),
    # S3-Rec pretraining.
    ("pretrain", "pretrain", []),
    ("pretrain-paper", "pretrain", ["--preset", "paper"]),
    ("pretrain-shape", "pretrain", ["--hidden-size", "16", "--num-layers", "1", "--num-heads", "4",
                                    "--dropout", "0.1"]),
    ("pretrain-paper-dropout", "pretrain", ["--preset", "paper", "--dropout", "0.1", "--hidden-size", "32"]),
    ("pretrain-objectives", "pretrain", ["--mask-p", "0.3", "--no-aap", "--mip-weight", "2", "--sp-weight", "0",
                                         "--aap-input", "item", "--reduction", "mean"]),
    ("pretrain-off-wins", "pretrain", ["--no-map", "--map-weight", "3", "--lr", "0.01", "--batch-size", "7"]),
    ("pretrain-attributes", "pretrain", ["--attributes", "category"]),
    ("pretrain-bad-mask", "pretrain", ["--mask-p", "1.5"]),
    # DSS pretraining (issue 29 item 2): DSSConfig's fields, seq2seq weight 1 by default.
    ("pretrain-dss", "pretrain", ["--model", "dss"]),
    ("pretrain-dss-options", "pretrain", ["--model", "dss", "--num-intentions", "3", "--temperature", "0.2",
                                          "--seq2seq-weight", "0.5", "--confidence-lambda", "1", "--beta", "noise",
                                          "--hidden-size", "32", "--num-layers", "1", "--dropout", "0.1",
                                          "--batch-size", "16", "--samples", "users"]),
    ("pretrain-dss-mask", "pretrain", ["--model", "dss", "--mask-p", "0.3"]),
    ("pretrain-s3rec-dss-flag", "pretrain", ["--num-intentions", "3"]),
]


# Where the CLI derived from the config fields deliberately differs from the recording
# (the old code's answer is in the json): case -> (what differs now, why).
_REFUSED = "a flag the model has no field for is refused, naming the models that have it (it was ignored)"
_PRESET = "a preset of another model names its model (the old message said the model had no such preset)"
# Since --model composed (issue 29): the messages that list a flag's models name it too
# (its flags are the same fields as DIF-SR's, DSS's and SINE's); every config is unchanged.
CHANGED = {
    "sasrec-preset-sine": ({"error": "seqrec train: error: preset 'small' is for --model sine, not sasrec"}, _PRESET),
    "s3rec-init-preset": ({"error": "seqrec train: error: preset 'paper' is for --model sine, not s3rec"}, _PRESET),
    "sine-preset-dss": ({"error": "seqrec train: error: preset 'seq2item-only' is for --model dss, not sine"},
                        _PRESET),
    "difsr-preset-sine": ({"error": "seqrec train: error: preset 'paper' is for --model sine, not difsr"}, _PRESET),
    "dss-preset-sine": ({"error": "seqrec train: error: preset 'small' is for --model sine, not dss"}, _PRESET),
    "dss-preset-unknown": ({"error": "seqrec train: error: unknown dss preset 'nope'; available: "
                                     "['default', 'seq2item-only']"}, "one message for every model"),
    "sasrec-fusion": ({"error": "seqrec train: error: --fusion is an option of --model composed/difsr, not of --model sasrec"},
                      "one message for every flag a model lacks"),
    "sasrec-attributes": ({"error": "seqrec train: error: --attributes is an option of --model composed/difsr, not of "
                                    "--model sasrec"}, "one message for every flag a model lacks"),
    "sasrec-num-intentions": ({"error": "seqrec train: error: --num-intentions is an option of --model composed/dss, not of "
                                        "--model sasrec"}, _REFUSED),
    "sasrec-temperature": ({"error": "seqrec train: error: --temperature is an option of --model composed/dss/sine, not of "
                                     "--model sasrec"}, _REFUSED),
    "sasrec-num-prototypes": ({"error": "seqrec train: error: --num-prototypes is an option of --model composed/sine, "
                                        "not of --model sasrec"}, _REFUSED),
    "sine-num-layers": ({"error": "seqrec train: error: --num-layers is an option of --model composed/difsr/dss/s3rec/sasrec, "
                                  "not of --model sine"}, _REFUSED),
    "sine-loss": ({"error": "seqrec train: error: --loss is an option of --model composed/difsr/dss/s3rec/sasrec, not of "
                            "--model sine"}, _REFUSED),
    "sine-attributes": ({"error": "seqrec train: error: --attributes is an option of --model composed/difsr, not of "
                                  "--model sine"}, _REFUSED),
    "difsr-temperature": ({"error": "seqrec train: error: --temperature is an option of --model composed/dss/sine, not of "
                                    "--model difsr"}, _REFUSED),
    "dss-fusion": ({"error": "seqrec train: error: --fusion is an option of --model composed/difsr, not of --model dss"},
                   _REFUSED),
    "dss-two-heads": ({"error": "seqrec train: error: DSSConfig.num_heads must be 1 (DSS is a single-head encoder), "
                                "got 2"},
                      "DSSConfig's own check of the field (the old CLI restated it)"),
    # DSS has these encoder fields; the old CLI ignored their flags.
    "dss-attention-dropout": ({"config": {"attention_dropout": 0.1}}, "DSS's --attention-dropout was ignored"),
    "dss-inner-size": ({"config": {"inner_size": 32}}, "DSS's --inner-size was ignored"),
    # An explicit --dropout sets the attention dropout too unless --attention-dropout is
    # given, preset or not (as `seqrec pretrain --preset paper --dropout` did); the old
    # train CLI let difsr-beauty's attention dropout win over an explicit --dropout.
    "difsr-beauty-dropout": ({"config": {"attention_dropout": 0.2}}, "explicit flags override presets"),
    # --init initialises every encoder tensor (issue 29 item 1): DSS takes the checkpoint's
    # sizes unless flags say otherwise, as the other encoders (the old CLI ignored them).
    "dss-init": ({"config": {"hidden_size": 8, "num_layers": 1}}, "DSS --init takes the checkpoint's sizes"),
    # Issue 25 item 4: "sampled" (log-Q corrected sampled softmax) became a SASRec loss; the
    # recording refused it. A whole answer (the recorded one was an error).
    "sasrec-sampled": ({"name": "sasrec", "preset": None,
                        "train": {"batch_size": 256, "lr": 0.001, "num_negatives": 100},
                        "config": {"attention_dropout": 0.5, "hidden_act": "gelu", "hidden_dropout": 0.5,
                                   "hidden_size": 64, "initializer_range": 0.02, "inner_size": None,
                                   "layer_norm_eps": 1e-12, "loss": "sampled", "max_len": 10, "num_heads": 2,
                                   "num_items": 40, "num_layers": 2}},
                       "sampled is a SASRec loss now (issue 25 item 4); 100 negatives, as DSS's sampled loss"),
}


def _expected(case: str) -> dict:
    recorded = json.loads(PINS.read_text())[case]
    if case not in CHANGED:
        return recorded
    change = CHANGED[case][0]
    if "name" in change:  # the recording's answer was an error: the whole answer now
        return change
    if "error" in change:
        return {"exit": 2, **change}
    return {**recorded, "config": {**recorded["config"], **change["config"]}}


class _Built(Exception):
    """Raised by the stand-in Trainer / Pretrainer: the CLI got as far as training."""

    def __init__(self, spec, config):
        super().__init__("built")
        self.spec, self.config = spec, config


class _Stop:
    def __init__(self, model, data, config, *, model_spec=None, **options):
        raise _Built(model_spec, config)


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def _run(command: str, argv: list[str], paths: dict, out: Path, read_err) -> dict:
    """What ``seqrec <command> DATA argv`` builds: the model spec and the model's training
    settings, or its exit status and the last line of its error."""
    argv = [a.format(**paths) for a in argv]
    read_err()
    try:
        rc = main([command, *DATA, *(["--out", str(out)] if command == "pretrain" else []), *argv])
    except _Built as built:
        return {"name": built.spec["name"], "preset": built.spec.get("preset"), "config": _plain(built.spec["config"]),
                "train": {k: getattr(built.config, k) for k in TRAIN_KEYS if hasattr(built.config, k)}}
    except SystemExit as exc:  # refused while parsing
        rc = exc.code
    return {"exit": rc, "error": read_err().strip().splitlines()[-1]}


def _write_init_runs(root: Path) -> dict:
    """Checkpoints for --init: a small SASRec run, an S3-Rec pretraining, a small DSS run."""
    quick = [*DATA, "--epochs", "1", "--no-progress", "--sampled-negatives", "5"]
    assert main(["train", "--model", "sasrec", *quick, "--hidden-size", "16", "--num-layers", "1",
                 "--num-heads", "4", "--inner-size", "24", "--out", str(root / "sasrec")]) == 0
    assert main(["pretrain", *DATA, "--epochs", "1", "--no-progress", "--hidden-size", "16", "--num-layers", "1",
                 "--out", str(root / "pretrain")]) == 0
    assert main(["train", "--model", "dss", *quick, "--hidden-size", "8", "--num-layers", "1",
                 "--out", str(root / "dss")]) == 0
    return {"sasrec_run": str(root / "sasrec"), "pretrain_run": str(root / "pretrain"), "dss_run": str(root / "dss")}


@pytest.fixture(scope="module")
def init_runs(tmp_path_factory):
    return _write_init_runs(tmp_path_factory.mktemp("init"))


@pytest.fixture
def stand_ins(monkeypatch):
    import seqrec.train
    import seqrec.train.pretrain

    monkeypatch.setattr(seqrec.train, "Trainer", _Stop)
    monkeypatch.setattr(seqrec.train.pretrain, "Pretrainer", _Stop)


def _field_default(name: str, field: str):
    from seqrec.models.registry import MODELS

    f = {f.name: f for f in dataclasses.fields(MODELS[name][0])}[field]
    return _plain(f.default if f.default is not dataclasses.MISSING else f.default_factory())


@pytest.mark.parametrize("case,command,argv", CASES, ids=[c[0] for c in CASES])
def test_model_options_as_recorded(case, command, argv, init_runs, stand_ins, tmp_path, capsys):
    expected = _expected(case)
    got = _run(command, argv, init_runs, tmp_path / "run", lambda: capsys.readouterr().err)
    if "error" in expected or "error" in got:
        assert got == expected
        return
    assert (got["name"], got["preset"], got["train"]) == (expected["name"], expected["preset"], expected["train"])
    assert {k: got["config"].get(k) for k in expected["config"]} == expected["config"]
    for field in set(got["config"]) - set(expected["config"]):  # added since: its default, unless given
        assert got["config"][field] == _field_default(got["name"], field), field


def test_every_case_is_recorded():
    assert sorted(json.loads(PINS.read_text())) == sorted([c[0] for c in CASES] + ["__flags__"])


def _parser_flags() -> dict:
    """{command: {flag: its choices (or None)}} of train and pretrain."""
    from seqrec.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    return {command: {flag: sorted(action.choices) if action.choices else None
                      for action in commands[command]._actions for flag in action.option_strings}
            for command in ("train", "pretrain")}


def test_every_flag_keeps_its_name_and_choices():
    """Every recorded flag is still there with every recorded choice (choices may be added:
    `seqrec pretrain --model dss`, `--samples windows`)."""
    recorded, now = json.loads(PINS.read_text())["__flags__"], _parser_flags()
    for command, flags in recorded.items():
        kept = {f: now[command].get(f, "missing") for f in flags}
        kept = {f: sorted(set(c) & set(flags[f])) if isinstance(c, list) and flags[f] else c for f, c in kept.items()}
        assert kept == flags, command


def _help_of(command: str) -> str:
    import os
    from unittest import mock

    from seqrec.cli import build_parser

    with mock.patch.dict(os.environ, {"COLUMNS": "2000"}):  # no line breaks inside words ("sub-\nlayer")
            return " ".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())


def test_help_states_each_models_default():
    text = _help_of("train")
    assert "--temperature TEMPERATURE composed/dss: clustering temperature tau of p(k|i); sine: tau of the interest " \
           "aggregation softmax (default: composed 0.5, dss 0.5, sine 0.1)" in text
    assert "(default: composed 4 x hidden size, difsr 256, dss 4 x hidden size, s3rec 4 x hidden size, sasrec 4 x hidden size)" in text
    assert "Adam learning rate (default: composed 0.001, difsr 0.0001, dss 0.001, s3rec 0.001, sasrec 0.001, sine 0.001)" in text
    assert "most recent first (default: all)" in text
    assert "--no-attribute-predictor turns off the auxiliary attribute predictors" in text
    assert "--num-intentions NUM_INTENTIONS K intention prototypes / vectors (default: 4)" in text
    pretrain = _help_of("pretrain")
    assert "--mask-p MASK_P item masking probability p (default: 0.2)" in pretrain
    assert "--dropout DROPOUT dropout on embeddings and sub-layer outputs, and dropout on attention " \
           "probabilities unless --attention-dropout is given (default: 0.5)" in pretrain


def test_a_new_config_field_is_a_flag(monkeypatch):
    """A field added to a model config is a flag, with its help and default, and reaches
    the config; nothing else changes."""
    import argparse

    from seqrec.model_options import ModelOptions
    from seqrec.models import SASRec, SASRecConfig
    from seqrec.models.config import spec
    from seqrec.models.registry import REGISTRY, Registration

    @dataclasses.dataclass(frozen=True)
    class WiderConfig(SASRecConfig):
        gamma: float = spec(0.25, kind="positive", help="a new knob")
        mode: str = spec("a", kind="choice", choices=("a", "b"), help="a new switch")

    monkeypatch.setitem(REGISTRY, "wider", Registration(WiderConfig, SASRec, "Wider"))
    options = ModelOptions({"sasrec": "sasrec", "wider": "wider"})
    parser = argparse.ArgumentParser()
    groups = options.add_to(parser)
    assert set(groups) == {"wider"}
    help_text = " ".join(parser.format_help().split())
    assert "Wider (--model wider): --gamma GAMMA a new knob (default: 0.25) --mode {a,b} a new switch " \
           "(default: a)" in help_text
    args = parser.parse_args(["--gamma", "0.5", "--mode", "b", "--hidden-size", "32"])
    args.model = "wider"
    assert options.config(args) == {"gamma": 0.5, "mode": "b", "hidden_size": 32}
    args.model = "sasrec"
    with pytest.raises(ValueError, match="--gamma, --mode are options of --model wider, not of --model sasrec"):
        options.config(args)


def _record() -> None:
    """Write cli_model_options.json from the code as it is (run from the repository root)."""
    import contextlib
    import io
    import tempfile

    import seqrec.train
    import seqrec.train.pretrain

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = _write_init_runs(root)
        seqrec.train.Trainer = seqrec.train.pretrain.Pretrainer = _Stop
        err = io.StringIO()

        def read_err():
            text = err.getvalue()
            err.seek(0)
            err.truncate()
            return text

        with contextlib.redirect_stderr(err):
            pins = {case: _run(command, argv, paths, root / f"case{i}", read_err)
                    for i, (case, command, argv) in enumerate(CASES)}
    pins["__flags__"] = _parser_flags()
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(pins)} cases in {PINS}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        _record()
