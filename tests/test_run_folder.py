"""`seqrec train --out`: the run folder holds the config, the output says where it is and
how to evaluate or resume it; `--overwrite` (what `make run` passes) starts afresh."""
from __future__ import annotations

import json
import shlex

from seqrec.cli import main

TINY = ["--data", "synthetic", "--synthetic-users", "150", "--synthetic-items", "60", "--hidden-size", "8",
        "--num-layers", "1", "--max-len", "10", "--batch-size", "64", "--patience", "0", "--sampled-negatives", "10",
        "--no-progress"]


def test_run_folder_config_and_how_to_continue(tmp_path, capsys):
    out = tmp_path / "quickstart"
    argv = ["train", "--model", "sasrec", *TINY, "--epochs", "2", "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    first, second = captured.err.splitlines()[:2]
    # two short lines: the data, then the model with where its config is (not the config itself)
    assert len(first) < 150 and "{" not in first and first.startswith("SequenceDataset('synthetic': 150 users"), first
    assert second.startswith("model sasrec, ") and second.endswith(f"parameters; config: {out / 'config.json'}")
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "sasrec" and config["model"]["config"]["hidden_size"] == 8
    assert config["train"]["epochs"] == 2 and shlex.split(config["command"])[1:] == argv
    for name in ("checkpoint.pt", "history.jsonl", "result.json", "config.json"):
        assert (out / name).exists(), name
    assert f"run folder: {out} (checkpoint.pt, config.json, history.jsonl, result.json)" in captured.err
    assert f"seqrec evaluate --checkpoint {out}" in captured.err
    assert "run folder" not in captured.out  # stdout: the results only
    resume = next(line for line in captured.err.splitlines() if "resume it" in line).split(":  ", 1)[1]
    resume_argv = shlex.split(resume)[1:]
    assert "--overwrite" not in resume_argv and resume_argv[-1] == "--resume"
    # the printed commands work as printed
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    assert "sasrec after 2 of 2 epochs" in capsys.readouterr().out
    assert main([*resume_argv[:-1], "--epochs", "3", "--resume"]) == 0
    assert f"resumed {out} after epoch 2" in capsys.readouterr().err
    assert len((out / "history.jsonl").read_text().splitlines()) == 3

    # rerunning the same command (make run twice) starts afresh: a fresh history of 2 epochs
    assert main(argv) == 0
    capsys.readouterr()
    assert len((out / "history.jsonl").read_text().splitlines()) == 2


def test_overwrite_contradicts_resume(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path), "--overwrite", "--resume"]) == 2
    assert "--resume continues the run in --out, --overwrite discards it: give one of them" in capsys.readouterr().err
    assert main(["train", *TINY, "--epochs", "1", "--overwrite"]) == 2
    assert "--overwrite needs --out" in capsys.readouterr().err
