"""Hostile inputs to training, checkpoints and the CLI (issue 23): one row per case.

Each row of ``CASES`` is (case id, a call given a fresh :class:`Ctx`, what must happen:
an exit code or an exception type, a regular expression the message must match). A new
finding becomes a new row. The calls run in-process: ``main(argv)`` returns an exit code
(argparse errors raise SystemExit, read as their code) and its message is stderr.

Tests below the table cover what a row cannot: that nothing was changed on disk, the
success paths (--resume, --overwrite, old checkpoints), and memory across epochs.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from seqrec.cli import main
from seqrec.train import TrainConfig, Trainer, load_checkpoint
from seqrec.utils import (ChecksumError, NoSpaceError, atomic_write, load_torch, lock_run_folder, read_json,
                          read_jsonl, save_torch, stale_temp_files)

TINY = ["--data", "synthetic", "--synthetic-users", "120", "--synthetic-items", "80", "--hidden-size", "16",
        "--num-layers", "1", "--max-len", "12", "--batch-size", "64", "--patience", "0", "--sampled-negatives", "10",
        "--no-progress"]
TINY_PRE = ["--data", "synthetic", "--synthetic-users", "120", "--synthetic-items", "80", "--hidden-size", "16",
            "--num-layers", "1", "--max-len", "12", "--batch-size", "256", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch training run and a two-epoch pretraining run (snapshot of
    epoch 1 kept), made once; each case gets its own copy."""
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", *TINY, "--epochs", "2", "--out", str(root / "run")]) == 0
    assert main(["pretrain", *TINY_PRE, "--epochs", "2", "--keep-every", "1", "--out", str(root / "pre")]) == 0
    return root


class Ctx:
    """What a case may use: a fresh folder, fresh copies of the finished runs."""

    def __init__(self, tmp: Path, finished: Path):
        self.tmp, self._finished = tmp, finished

    def copy(self, name: str) -> Path:
        target = self.tmp / name
        if not target.exists():
            shutil.copytree(self._finished / name, target)
        return target

    @property
    def run(self) -> Path:
        return self.copy("run")

    @property
    def pre(self) -> Path:
        return self.copy("pre")


def train(ctx: Ctx, *args: str, out: Path | None = None, epochs: int = 1) -> int:
    return main(["train", *TINY, "--epochs", str(epochs), "--out", str(out or ctx.tmp / "new"), *args])


def pretrain(ctx: Ctx, *args: str, out: Path | None = None) -> int:
    return main(["pretrain", *TINY_PRE, "--epochs", "1", "--out", str(out or ctx.tmp / "newpre"), *args])


def item_embedding_offset(path: Path, key: str = "embedding.item.weight", part: str = "model") -> int:
    """Byte offset in ``path`` of the stored values of tensor ``state[part][key]``."""
    state = load_checkpoint(path)
    values = state[part][key].numpy().tobytes()
    offset = path.read_bytes().find(values)
    assert offset > 0 and len(values) >= 4000
    return offset


def overwrite(path: Path, offset: int, data: bytes) -> Path:
    """Change bytes of ``path`` in place (same size), as a damaged disk or an editor does."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    assert path.stat().st_size == size
    return path


def change_digit(path: Path, after: str, occurrence: int = 1) -> Path:
    """Change the digit that follows the ``occurrence``-th ``after`` in a text file."""
    text = path.read_text()
    at = -1
    for _ in range(occurrence):
        at = text.index(after, at + 1)
    at += len(after)
    assert text[at].isdigit()
    return overwrite(path, at, str((int(text[at]) + 1) % 10).encode())


def truncated(path: Path, nbytes: int) -> Path:
    path.write_bytes(path.read_bytes()[:-nbytes])
    return path


def appended(path: Path, data: bytes) -> Path:
    with open(path, "ab") as fh:
        fh.write(data)
    return path


def removed(path: Path) -> Path:
    """Delete ``path``; its folder."""
    path.unlink()
    return path.parent


def corrupt_embedding(path: Path, nbytes: int) -> Path:
    """``nbytes`` of the stored item embedding replaced by other finite float32 values."""
    offset = item_embedding_offset(path)
    return overwrite(path, offset + 64, torch.full((nbytes // 4,), 0.25).numpy().tobytes())


def with_nan_weight(path: Path) -> Path:
    """The checkpoint re-saved (with a valid checksum) holding a NaN in one weight (of the
    last and of the best state)."""
    state = load_checkpoint(path)
    state["model"]["embedding.item.weight"][3, 1] = float("nan")
    state["best_state"]["embedding.item.weight"][3, 1] = float("nan")
    save_torch(state, path)
    return path


def nospace_on_write(monkeypatch, after_bytes: int = 100, error: BaseException | None = None):
    """Make every file opened by atomic_write fail like a full disk once ``after_bytes``
    were written to it (part of the data reaches the temporary file first)."""
    import seqrec.utils as utils

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data):
            if self.written + len(data) > after_bytes:
                self.fh.write(bytes(data[:max(after_bytes - self.written, 0)]) if "b" in self.fh.mode else "")
                raise error or OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(utils.os, "fdopen", lambda fd, mode="r": Full(real_fdopen(fd, mode)))


def inf_after_last_step(ctx: Ctx):
    """Train with an optimizer whose last step of the first epoch turns one weight into
    Inf: every loss of that epoch is finite, the weights are not."""
    from seqrec.data import synthetic
    from seqrec.models import build_model

    ds = synthetic(num_users=60, num_items=40, seed=0)
    model = build_model("sasrec", num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=1, num_heads=1)
    split = ds.leave_one_out(max_len=10)
    trainer = Trainer(model, split, TrainConfig(epochs=2, batch_size=16, sampled_negatives=5), out_dir=ctx.tmp / "inf")
    step, steps = trainer.optimizer.step, []

    def poisoned_step(*a, **k):
        result = step(*a, **k)
        steps.append(1)
        if len(steps) == split.num_train_batches(16):
            with torch.no_grad():
                model.embedding.position.weight[0, 0] = float("inf")
        return result

    trainer.optimizer.step = poisoned_step
    try:
        return trainer.fit()
    finally:
        assert not (ctx.tmp / "inf" / "checkpoint.pt").exists()  # never saved


@dataclass
class Case:
    id: str
    call: Callable[[Ctx], Any]
    expect: int | type[BaseException]  # exit code of `seqrec`, or the exception raised
    message: str  # regular expression searched in the message (stderr for exit codes)


def _ids(cases):
    return [c.id for c in cases]


CASES = [
    # ---- 2. zero / negative / non-finite options: refused while parsing, naming the option
    Case("train-lr-0", lambda c: train(c, "--lr", "0"), 2, r"argument --lr: must be > 0, got 0"),
    Case("train-lr-negative", lambda c: train(c, "--lr", "-0.1"), 2, r"argument --lr: must be > 0, got -0.1"),
    Case("train-lr-nan", lambda c: train(c, "--lr", "nan"), 2, r"argument --lr: must be a finite number, got nan"),
    Case("train-lr-inf", lambda c: train(c, "--lr", "inf"), 2, r"argument --lr: must be a finite number, got inf"),
    Case("train-batch-size-0", lambda c: train(c, "--batch-size", "0"), 2,
         r"argument --batch-size: must be >= 1, got 0"),
    Case("train-batch-size-text", lambda c: train(c, "--batch-size", "many"), 2,
         r"argument --batch-size: not an integer: 'many'"),
    Case("train-epochs-0", lambda c: main(["train", *TINY, "--epochs", "0"]), 2, r"argument --epochs: must be >= 1"),
    Case("train-eval-every-0", lambda c: train(c, "--eval-every", "0"), 2, r"argument --eval-every: must be >= 1"),
    Case("train-patience-negative", lambda c: train(c, "--patience", "-1"), 2, r"argument --patience: must be >= 0"),
    Case("train-weight-decay-negative", lambda c: train(c, "--weight-decay=-1e-4"), 2,
         r"argument --weight-decay: must be >= 0, got -1e-4"),
    Case("train-num-negatives-0", lambda c: train(c, "--num-negatives", "0"), 2,
         r"argument --num-negatives: must be >= 1, got 0"),
    Case("train-sampled-negatives-0", lambda c: train(c, "--sampled-negatives", "0"), 2,
         r"argument --sampled-negatives: must be >= 1, got 0"),
    Case("train-ks-0", lambda c: train(c, "--ks", "5", "0"), 2, r"argument --ks: must be >= 1, got 0"),
    Case("train-max-len-0", lambda c: train(c, "--max-len", "0"), 2, r"argument --max-len: must be >= 1, got 0"),
    Case("train-synthetic-users-0", lambda c: train(c, "--synthetic-users", "0"), 2,
         r"argument --synthetic-users: must be >= 1, got 0"),
    Case("train-kcore-negative", lambda c: train(c, "--kcore", "-2"), 2, r"argument --kcore: must be >= 0, got -2"),
    # model options: their config dataclass refuses 0, naming the field (exit 2, no traceback)
    Case("train-hidden-size-0", lambda c: train(c, "--hidden-size", "0"), 2, r"hidden_size.* >= 1|hidden_size.*got 0"),
    Case("pretrain-lr-0", lambda c: pretrain(c, "--lr", "0"), 2, r"argument --lr: must be > 0, got 0"),
    Case("pretrain-batch-size-0", lambda c: pretrain(c, "--batch-size", "0"), 2,
         r"argument --batch-size: must be >= 1, got 0"),
    Case("pretrain-epochs-0", lambda c: main(["pretrain", *TINY_PRE, "--epochs", "0", "--out", str(c.tmp / "p")]), 2,
         r"argument --epochs: must be >= 1, got 0"),
    Case("pretrain-keep-every-negative", lambda c: pretrain(c, "--keep-every", "-1"), 2,
         r"argument --keep-every: must be >= 0, got -1"),
    Case("data-stats-ks-0", lambda c: main(["data", "stats", "--data", "synthetic", "--ks", "0"]), 2,
         r"argument --ks: must be >= 1, got 0"),
    # ---- 15. the seed contract, 0 <= seed < 2**63, said by the option
    Case("train-seed-2**63", lambda c: train(c, "--seed", str(2**63)), 2,
         r"argument --seed: must be in \[0, 2\*\*63\), got 9223372036854775808"),
    Case("train-seed-negative", lambda c: train(c, "--seed", "-1"), 2, r"argument --seed: must be in \[0, 2\*\*63\)"),
    Case("pretrain-seed-2**64", lambda c: pretrain(c, "--seed", str(2**64)), 2,
         r"argument --seed: must be in \[0, 2\*\*63\), got 18446744073709551616"),
    # ---- 3. a file changed after it was written: refused, naming it
    Case("evaluate-4000-bytes-of-embedding-changed",
         lambda c: main(["evaluate", "--checkpoint", str(corrupt_embedding(c.run / "checkpoint.pt", 4000))]), 2,
         r"run/checkpoint.pt: checksum mismatch: the file changed after seqrec wrote it"),
    Case("resume-4-bytes-changed",
         lambda c: train(c, "--resume", out=corrupt_embedding(c.run / "checkpoint.pt", 4).parent, epochs=3), 2,
         r"run/checkpoint.pt: checksum mismatch"),
    Case("load-checkpoint-4-bytes-changed", lambda c: load_checkpoint(corrupt_embedding(c.run / "checkpoint.pt", 4)),
         ChecksumError, r"run/checkpoint.pt: checksum mismatch"),
    Case("pretrain-resume-changed",
         lambda c: pretrain(c, "--resume", "--epochs", "3",
                            out=overwrite(c.pre / "pretrain.pt", 2000, b"\x01\x02\x03\x04").parent), 2,
         r"pre/pretrain.pt: checksum mismatch"),
    Case("init-from-changed-pretrain-snapshot",
         lambda c: train(c, "--model", "s3rec", "--init",
                         str(overwrite(c.pre / "pretrain-epoch1.pt", 1500, b"\xff" * 8))), 2,
         r"pre/pretrain-epoch1.pt: checksum mismatch"),
    Case("init-from-changed-train-checkpoint",
         lambda c: train(c, "--init", str(corrupt_embedding(c.run / "checkpoint.pt", 16).parent)), 2,
         r"run/checkpoint.pt: checksum mismatch"),
    Case("checkpoint-truncated", lambda c: load_checkpoint(truncated(c.run / "checkpoint.pt", 300)), ValueError, r"run/checkpoint.pt: (damaged: its checksum trailer|not a readable seqrec checkpoint)"),
    Case("checkpoint-appended-to", lambda c: load_checkpoint(appended(c.run / "checkpoint.pt", b"tail")), ChecksumError, r"run/checkpoint.pt: damaged: its checksum trailer is not at the end of the file"),
    Case("history-line-edited", lambda c: read_jsonl(change_digit(c.run / "history.jsonl", '"loss": ')),
         ChecksumError, r"run/history.jsonl:1: checksum mismatch"),
    Case("result-edited", lambda c: read_json(change_digit(c.run / "result.json", '"best_epoch": ')),
         ChecksumError, r"run/result.json: checksum mismatch"),
    Case("pretrain-log-line-edited", lambda c: read_jsonl(change_digit(c.pre / "pretrain.jsonl", '"loss": ', 2)),
         ChecksumError, r"pre/pretrain.jsonl:2: checksum mismatch"),
    # ---- 9. a run folder is continued (--resume) or replaced (--overwrite), never silently overwritten
    Case("train-into-finished-run", lambda c: train(c, out=c.run), 2,
         r"--out .*run already holds a run \(checkpoint.pt, history.jsonl, result.json\): continue it with "
         r"--resume, or discard it and start afresh with --overwrite"),
    Case("train-into-killed-run", lambda c: train(c, out=removed(c.run / "result.json")), 2,
         r"already holds a run \(checkpoint.pt, history.jsonl\): continue it with --resume.*--overwrite"),
    Case("pretrain-into-finished-run", lambda c: pretrain(c, out=c.pre), 2,
         r"--out .*pre already holds a run \(pretrain-epoch1.pt, pretrain-epoch2.pt, pretrain.jsonl, pretrain.pt\)"
         r": continue it with --resume, or discard it and start afresh with --overwrite"),
    Case("resume-and-overwrite", lambda c: train(c, "--resume", "--overwrite", out=c.run), 2,
         r"--resume continues the run in --out, --overwrite discards it: give one of them"),
    Case("resume-without-out", lambda c: main(["train", *TINY, "--epochs", "1", "--resume"]), 2,
         r"--resume needs --out"),
    Case("out-is-a-file", lambda c: train(c, out=Path(shutil.copy(c.run / "result.json", c.tmp / "r.json"))), 2,
         r"r.json: exists and is not a folder"),
    # ---- 11. non-finite values: stopped at the first, naming where and why
    Case("train-lr-1e30", lambda c: train(c, "--lr", "1e30", epochs=3), 1,
         r"epoch \d+, step \d+ of \d+: the training loss is (nan|inf|-inf), not finite; stopped before updating the "
         r"weights with it\. Likely causes: a learning rate too high \(lr 1e\+30; try 10x lower\)"),
    Case("pretrain-lr-1e30", lambda c: pretrain(c, "--lr", "1e30", "--epochs", "2"), 1,
         r"pretraining epoch \d+, step \d+ of \d+: the training loss is (nan|inf|-inf), not finite.*lr 1e\+30"),
    Case("weights-become-inf-with-finite-loss", inf_after_last_step, FloatingPointError,
         r"epoch 1: parameter 'embedding.position.weight' became NaN or Inf \(every loss was finite"),
    Case("evaluate-checkpoint-with-nan",
         lambda c: main(["evaluate", "--checkpoint", str(with_nan_weight(c.run / "checkpoint.pt"))]), 2,
         r"run/checkpoint.pt: the checkpoint's model\['embedding.item.weight'\] holds NaN or Inf values; seqrec "
         r"never saves non-finite weights"),
    Case("resume-checkpoint-with-nan",
         lambda c: train(c, "--resume", out=with_nan_weight(c.run / "checkpoint.pt").parent, epochs=3), 2,
         r"run/checkpoint.pt: the checkpoint's model\['embedding.item.weight'\] holds NaN or Inf"),
    Case("init-checkpoint-with-nan",
         lambda c: train(c, "--init", str(with_nan_weight(c.run / "checkpoint.pt"))), 2,
         r"run/checkpoint.pt: the checkpoint's model\['embedding.item.weight'\] holds NaN or Inf"),
]


def _outcome(case: Case, ctx: Ctx, capsys) -> tuple[int | type[BaseException], str]:
    try:
        result = case.call(ctx)
    except SystemExit as exc:  # argparse
        return exc.code, capsys.readouterr().err
    except Exception as exc:  # noqa: BLE001 (the table says which)
        return type(exc), str(exc)
    return result, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_hostile_input(case: Case, finished, tmp_path, capsys):
    capsys.readouterr()
    got, message = _outcome(case, Ctx(tmp_path, finished), capsys)
    if isinstance(case.expect, int):
        assert got == case.expect, f"{case.id}: exit {got}, expected {case.expect}; stderr:\n{message}"
        assert "Traceback" not in message
    else:
        assert isinstance(got, type) and issubclass(got, case.expect), f"{case.id}: {got}: {message}"
    assert re.search(case.message, message), f"{case.id}: {message!r} does not match {case.message!r}"


def test_case_ids_are_unique():
    assert len(set(_ids(CASES))) == len(CASES)
