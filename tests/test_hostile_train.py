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
import platform
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
from seqrec.utils import (ChecksumError, NoSpaceError, atomic_write, lock_run_folder, read_json,
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
    Case("train-eval-chunk-size-0", lambda c: train(c, "--eval-chunk-size", "0"), 2,
         r"argument --eval-chunk-size: must be >= 1, got 0"),
    Case("train-eval-memory-text", lambda c: train(c, "--eval-memory", "banana"), 2,
         r"argument --eval-memory: the size must be a size like '2GiB'.*got 'banana'"),
    Case("train-eval-memory-0", lambda c: train(c, "--eval-memory", "0"), 2,
         r"argument --eval-memory: the size must be at least 1 byte, got '0'"),
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
    # ---- options added by the open trainer, catalogues, DSS pretraining (issues 25, 26, 29)
    Case("train-warmup-steps-negative", lambda c: train(c, "--warmup-steps", "-1"), 2,
         r"argument --warmup-steps: must be >= 0, got -1"),
    Case("train-accumulate-0", lambda c: train(c, "--accumulate", "0"), 2, r"argument --accumulate: must be >= 1, got 0"),
    Case("train-clip-grad-norm-0", lambda c: train(c, "--clip-grad-norm", "0"), 2,
         r"argument --clip-grad-norm: must be > 0, got 0"),
    Case("train-negatives-unknown", lambda c: train(c, "--train-negatives", "bogus"), 2,
         r"argument --train-negatives: .*unknown sampler 'bogus'"),
    Case("train-log-q-unknown", lambda c: train(c, "--log-q", "maybe"), 2, r"argument --log-q: invalid choice: 'maybe'"),
    Case("train-init-partial-without-init", lambda c: train(c, "--init-partial"), 2,
         r"--init-partial says how to load --init's weights; give --init too"),
    # --init-fold-scale (issue 29): the scale it folds is a DSS pretraining's; the refusals
    # that need one (a SASRec target, a seq2seq term) are in test_dss_pretrain
    Case("train-init-fold-scale-without-init", lambda c: train(c, "--init-fold-scale"), 2,
         r"--init-fold-scale says how to load --init's weights; give --init too"),
    Case("train-init-fold-scale-from-s3rec-pretraining",
         lambda c: train(c, "--model", "dss", "--preset", "seq2item-only", "--init", str(c.pre),
                         "--init-fold-scale"), 2,
         r"--init-fold-scale: --init .*pre/pretrain.pt is a 's3rec' pretrain checkpoint; the scale it folds is "
         r"that of `seqrec pretrain --model dss`"),
    Case("train-init-fold-scale-from-train-checkpoint",
         lambda c: train(c, "--model", "dss", "--preset", "seq2item-only", "--init", str(c.run),
                         "--init-fold-scale"), 2,
         r"--init-fold-scale: --init .*run/checkpoint.pt is a 'sasrec' training checkpoint"),
    Case("train-autocast-fp16-on-cpu", lambda c: train(c, "--autocast", "fp16"), 2,
         r"autocast 'fp16' needs a CUDA device"),
    Case("pretrain-dss-window-step-0", lambda c: pretrain(c, "--model", "dss", "--window-step", "0"), 2,
         r"window_step must be a number in \(0, 1\], got 0"),
    Case("train-kcore-negative", lambda c: train(c, "--kcore", "-2"), 2, r"argument --kcore: must be >= 0, got -2"),
    # --model composed (issue 29): a part or a weight that does not fit is refused, naming the field
    Case("train-composed-side-information-unknown",
         lambda c: train(c, "--model", "composed", "--side-information", "bogus"), 2,
         r"argument --side-information: invalid choice: 'bogus'"),
    Case("train-composed-difsr-without-attributes",
         lambda c: train(c, "--model", "composed", "--side-information", "difsr"), 2,
         r"ComposedConfig.attribute_fields must be at least one attribute field with side_information='difsr'"),
    Case("train-composed-seq2seq-weight-negative",
         lambda c: train(c, "--model", "composed", "--interests", "dss", "--seq2seq-weight=-1"), 2,
         r"ComposedConfig.seq2seq_weight must be a number >= 0"),
    Case("train-composed-preset-best-without-attributes",
         lambda c: train(c, "--model", "composed", "--preset", "best"), 2,
         r"attribute_fields must be at least one attribute field with side_information='difsr' "
         r"\(seqrec train: --attributes FIELD"),
    Case("train-composed-preset-unknown", lambda c: train(c, "--model", "composed", "--preset", "bets"), 2,
         r"unknown composed preset 'bets'; available: \['best'\]"),
    Case("train-composed-nothing-to-train", lambda c: train(c, "--model", "composed", "--next-item-weight", "0"), 2,
         r"ComposedConfig.next_item_weight must be > 0 when every other objective's weight is 0"),
    Case("train-composed-dss-with-bce", lambda c: train(c, "--model", "composed", "--interests", "dss", "--loss", "bce"),
         2, r"'ce' or 'sampled' with interests='dss'"),
    # S3-Rec's objectives on --model composed: AAP / MAP without attributes, a bad weight or mask
    # probability, an unknown AAP input, a field that is not in the data
    Case("train-composed-aap-without-attributes", lambda c: train(c, "--model", "composed", "--aap-weight", "0.2"), 2,
         r"ComposedConfig.attribute_fields must be one or more categorical attribute fields with aap_weight or "
         r"map_weight > 0"),
    Case("train-composed-map-without-attributes", lambda c: train(c, "--model", "composed", "--map-weight", "1"), 2,
         r"ComposedConfig.attribute_fields must be one or more categorical attribute fields"),
    Case("train-composed-mip-weight-negative", lambda c: train(c, "--model", "composed", "--mip-weight=-1"), 2,
         r"ComposedConfig.mip_weight must be a number >= 0"),
    Case("train-composed-sp-weight-nan", lambda c: train(c, "--model", "composed", "--sp-weight", "nan"), 2,
         r"ComposedConfig.sp_weight must be a number >= 0"),
    Case("train-composed-mask-p-above-1", lambda c: train(c, "--model", "composed", "--mip-weight", "1",
                                                          "--mask-p", "1.5"), 2,
         r"ComposedConfig.mask_prob must be a number in \[0, 1\]"),
    Case("train-composed-aap-input-unknown", lambda c: train(c, "--model", "composed", "--aap-input", "context"), 2,
         r"argument --aap-input: invalid choice: 'context'"),
    Case("train-composed-aap-unknown-field", lambda c: train(c, "--model", "composed", "--aap-weight", "0.2",
                                                             "--attributes", "colour"), 2,
         r"has no attribute field 'colour'"),
    Case("train-composed-s3rec-only-needs-a-term", lambda c: train(c, "--model", "composed", "--next-item-weight", "0",
                                                                   "--mip-weight", "0"), 2,
         r"ComposedConfig.next_item_weight must be > 0 when every other objective's weight is 0"),
    Case("train-composed-sine-with-bce",
         lambda c: train(c, "--model", "composed", "--interests", "sine", "--loss", "bce"), 2,
         r"ComposedConfig.loss must be 'ce' or 'sampled' with interests='sine'"),
    Case("train-composed-sine-more-interests-than-prototypes",
         lambda c: train(c, "--model", "composed", "--interests", "sine", "--num-prototypes", "2",
                         "--num-interests", "3"), 2,
         r"ComposedConfig.num_interests must be <= num_prototypes=2 with interests='sine'"),
    Case("train-composed-sine-with-seq2seq", lambda c: train(c, "--model", "composed", "--interests", "sine",
                                                             "--seq2seq-weight", "0.1"), 2,
         r"--seq2seq-weight is read only with --interests dss: this --model composed run would not read it"),
    Case("train-composed-reg-weight-without-sine", lambda c: train(c, "--model", "composed", "--reg-weight", "0.1"), 2,
         r"--reg-weight is read only with --interests sine"),
    # a flag of a part the run leaves off would change nothing (a model without it, silently)
    Case("train-composed-intentions-without-dss",
         lambda c: train(c, "--model", "composed", "--num-intentions", "8"), 2,
         r"--num-intentions is read only with --interests dss: this --model composed run would not read it "
         r"\(switch that part on, or drop the flag\)"),
    Case("train-composed-fusion-without-difsr",
         lambda c: train(c, "--model", "composed", "--interests", "dss", "--fusion", "concat", "--merge", "max"), 2,
         r"--fusion is read only with --side-information difsr; --merge is read only with --interests sine: "
         r"this --model composed run would not read them"),
    Case("train-composed-mask-p-without-s3rec-terms", lambda c: train(c, "--model", "composed", "--mask-p", "0.3"), 2,
         r"--mask-p is read only with S3-Rec's terms \(--aap-weight, --mip-weight, --map-weight, --sp-weight > 0\)"),
    Case("train-composed-aap-input-without-aap",
         lambda c: train(c, "--model", "composed", "--mip-weight", "0.2", "--aap-input", "item"), 2,
         r"--aap-input is read only with --aap-weight > 0"),
    Case("train-composed-max-prefixes-without-sine",
         lambda c: train(c, "--model", "composed", "--interests", "dss", "--max-prefixes", "3"), 2,
         r"--max-prefixes is read only with --interests sine"),
    Case("train-composed-sine-reg-weight-negative",
         lambda c: train(c, "--model", "composed", "--interests", "sine", "--reg-weight=-1"), 2,
         r"ComposedConfig.reg_weight must be a number >= 0"),
    # model options: their config dataclass refuses 0, naming the field (exit 2, no traceback)
    Case("train-hidden-size-0", lambda c: train(c, "--hidden-size", "0"), 2, r"hidden_size.* >= 1|hidden_size.*got 0"),
    Case("pretrain-lr-0", lambda c: pretrain(c, "--lr", "0"), 2, r"argument --lr: must be > 0, got 0"),
    Case("pretrain-preset-unknown", lambda c: pretrain(c, "--preset", "bets"), 2,
         r"argument --preset: invalid choice: 'bets'"),
    Case("pretrain-dss-preset-best", lambda c: pretrain(c, "--model", "dss", "--preset", "best"), 2,
         r"preset 'best' is for --model s3rec, not dss"),
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


# ------------------------------------------------------------------ beyond the table
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_a_refused_run_folder_is_left_untouched(finished, tmp_path, capsys, command):
    """Item 9: the refusal comes before anything is written (or loaded)."""
    ctx = Ctx(tmp_path, finished)
    folder = ctx.run if command == "train" else ctx.pre
    before = _snapshot(folder)
    assert (train(ctx, out=folder) if command == "train" else pretrain(ctx, out=folder)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _snapshot(folder) == before


def test_overwrite_starts_afresh(finished, tmp_path, capsys):
    """--overwrite: the previous run's files are gone (pretraining snapshots too) and the
    folder holds only the new run's."""
    ctx = Ctx(tmp_path, finished)
    run, pre = ctx.run, ctx.pre
    assert train(ctx, "--overwrite", "--seed", "7", out=run, epochs=1) == 0
    assert "--overwrite: removed checkpoint.pt, history.jsonl, result.json of the previous run" in capsys.readouterr().err
    assert len(read_jsonl(run / "history.jsonl")) == 1 and load_checkpoint(run)["train_config"]["seed"] == 7
    assert read_json(run / "result.json")["train"]["seed"] == 7
    assert pretrain(ctx, "--overwrite", out=pre) == 0
    assert sorted(p.name for p in pre.iterdir() if not p.name.startswith(".")) == ["pretrain.jsonl", "pretrain.pt"]
    assert load_checkpoint(pre / "pretrain.pt")["epoch"] == 1


def test_explicit_lr_and_batch_size_are_used_and_recorded(tmp_path):
    """Item 2, the other half: what is given is what trains and what is recorded."""
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.0025", "--batch-size", "7", "--out", str(tmp_path)]) == 0
    config = load_checkpoint(tmp_path)["train_config"]
    assert (config["lr"], config["batch_size"]) == (0.0025, 7)
    assert read_json(tmp_path / "result.json")["train"]["lr"] == 0.0025


def test_checksummed_files_stay_plain_to_other_readers(finished, tmp_path):
    """Item 3: the checksum is an ordinary zip comment / JSON field: torch.load, zipfile and
    json read the files as before, and the loaders strip it."""
    import zipfile

    run = Ctx(tmp_path, finished).run
    with zipfile.ZipFile(run / "checkpoint.pt") as archive:
        assert archive.testzip() is None and archive.comment.startswith(b"seqrec-sha256:")
    plain = torch.load(run / "checkpoint.pt", weights_only=False)
    assert plain["epoch"] == 2
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all(r["checksum"].startswith("sha256:") for r in lines)
    assert "checksum" not in read_jsonl(run / "history.jsonl")[0]
    assert read_jsonl(run / "history.jsonl") == load_checkpoint(run)["history"]
    assert json.loads((run / "result.json").read_text())["checksum"].startswith("sha256:")


def test_a_checkpoint_without_checksum_loads_with_a_warning(finished, tmp_path, capsys):
    """Item 3: checkpoints written before checksums (plain torch.save) still load and
    resume; the user is told that their content is not verified."""
    run = Ctx(tmp_path, finished).run
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    torch.save(state, run / "checkpoint.pt")  # as seqrec wrote it before
    with pytest.warns(UserWarning, match=r"checkpoint.pt: has no checksum .* loaded without verifying its content"):
        assert load_checkpoint(run)["epoch"] == 2
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run)]) == 0
    assert re.search(r"seqrec evaluate: warning: .*checkpoint.pt: has no checksum", capsys.readouterr().err)
    assert train(Ctx(tmp_path, finished), "--resume", out=run, epochs=3) == 0
    assert load_checkpoint(run)["epoch"] == 3  # and the resumed run writes a checksummed one


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(finished, tmp_path, capsys, monkeypatch):
    """Item 12: ENOSPC in the middle of the epoch-3 checkpoint: one line naming the file,
    exit 1, the epoch-2 checkpoint byte for byte, no temporary file left."""
    run = Ctx(tmp_path, finished).run
    before = _snapshot(run)
    nospace_on_write(monkeypatch, after_bytes=4096)
    capsys.readouterr()
    assert train(Ctx(tmp_path, finished), "--resume", out=run, epochs=3) == 1
    err = capsys.readouterr().err
    assert f"seqrec train: error: no space left on device while writing {run / 'checkpoint.pt'}; the previous " \
           "checkpoint.pt is intact" in err
    assert "Traceback" not in err and "inline_container" not in err
    monkeypatch.undo()
    assert _snapshot(run) == before  # nothing else was written either, no .tmp left
    assert load_checkpoint(run)["epoch"] == 2


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4058"),  # torch.save's
])
def test_disk_full_in_any_atomic_write(tmp_path, monkeypatch, error):
    """Item 12 at its root: atomic_write turns a full disk (as the OS or as torch's zip
    writer says it) into NoSpaceError naming the file; the old content stays."""
    target = tmp_path / "history.jsonl"
    target.write_text("old\n")
    nospace_on_write(monkeypatch, after_bytes=2, error=error)
    with pytest.raises(NoSpaceError, match=f"no space left on device while writing {re.escape(str(target))}; the "
                                           "previous history.jsonl is intact") as info:
        with atomic_write(target) as fh:
            fh.write("new content\n")
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(NoSpaceError, match="nothing was written"):
        with atomic_write(tmp_path / "fresh.json") as fh:
            fh.write("{}\n" * 10)
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


STALE = [".checkpoint.pt.k2x_9abc.tmp", ".history.jsonl.abcdefgh.tmp", ".result.json.12345678.tmp",
         ".pretrain.pt.a1b2c3d4.tmp", ".pretrain.jsonl.zzzzzzzz.tmp", ".pretrain-epoch12.pt.q_q_q_q_.tmp"]
NOT_OURS = [".notes.txt.abcdefgh.tmp", ".checkpoint.pt.tmp", "checkpoint.pt.abcdefgh.tmp", ".checkpoint.pt.ABCDEFGH.tmp"]


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("resume", [False, True])
def test_stale_temp_files_are_removed_on_start_and_resume(finished, tmp_path, capsys, command, resume):
    """Item 17: the temporary files of killed writes of this command's files go when a run
    starts or resumes in the folder; anything else stays."""
    ctx = Ctx(tmp_path, finished)
    folder = (ctx.run if command == "train" else ctx.pre) if resume else tmp_path / "fresh"
    folder.mkdir(exist_ok=True)
    ours = [n for n in STALE if n.startswith((".pretrain",) if command == "pretrain" else (".c", ".h", ".r"))]
    for name in STALE + NOT_OURS:
        (folder / name).write_bytes(b"partial")
    args = ["--resume"] if resume else []
    assert (train(ctx, *args, out=folder, epochs=3) if command == "train"
            else pretrain(ctx, *args, "--epochs", "3", out=folder)) == 0
    left = {p.name for p in folder.iterdir()}
    assert not left & set(ours)
    assert set(NOT_OURS) | (set(STALE) - set(ours)) <= left  # the other command's are its own to clean
    assert f"removed {folder / ours[0]}: the temporary file of a write that was killed" in capsys.readouterr().err


def test_stale_temp_files_stay_while_another_process_holds_the_folder(finished, tmp_path, capsys):
    """Item 17: only the holder of the run-folder lock removes temporary files: those of a
    live run in the same folder are its writes in progress."""
    run = Ctx(tmp_path, finished).run
    (run / STALE[0]).write_bytes(b"being written")
    holder = lock_run_folder(run)  # another seqrec process, as far as flock is concerned
    try:
        assert train(Ctx(tmp_path, finished), "--resume", out=run, epochs=3) == 2
        assert "is in use by another seqrec process" in capsys.readouterr().err
        assert (run / STALE[0]).exists()
    finally:
        holder.close()
    assert stale_temp_files(run, re.compile(r"checkpoint\.pt")) == [run / STALE[0]]


# Trains a small SASRec with full-softmax CE (freed [N, V] blocks of ~12 MB per step, as on
# ml-100k) in a fresh process that applies reuse_freed_memory as `seqrec train` does, and
# prints the RSS (MiB) at the end of every epoch. argv[1] == "0": the trainer's per-epoch
# release is switched off (what the issue measured).
RSS_CHILD = textwrap.dedent(r"""
    import os, sys, torch
    import seqrec.train.trainer as trainer_module
    from seqrec.data import synthetic
    from seqrec.models import build_model
    from seqrec.train import Trainer, TrainConfig
    from seqrec.utils import reuse_freed_memory
    torch.set_num_threads(1)
    reuse_freed_memory()
    if sys.argv[1] == "0":
        trainer_module.release_freed_memory = lambda: False
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    ds = synthetic(num_users=200, num_items=3000, seed=0)
    torch.manual_seed(0)
    model = build_model("sasrec", num_items=ds.num_items, max_len=50, hidden_size=16, num_layers=1, num_heads=1,
                        loss="ce")
    config = TrainConfig(epochs=20, batch_size=100, patience=0, sampled_negatives=20, progress=False)
    Trainer(model, ds.leave_one_out(max_len=50), config).fit(on_epoch=lambda r: print(round(rss(), 1), flush=True))
""")


def rss_per_epoch(release: bool = True) -> list[float]:
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, "1" if release else "0"], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True).stdout
    return [float(line) for line in out.split()]


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or platform.libc_ver()[0] != "glibc",
                    reason="RSS is read from Linux's /proc, and the kept and released memory is glibc's")
def test_memory_does_not_grow_across_epochs():
    """Item 16: with freed blocks kept for reuse (reuse_freed_memory), the free space
    inside the heap grew with the epochs (ml-100k: 720 MiB after epoch 1, 1,808 after
    67); the trainer hands it back at every epoch's end, so the RSS after epoch 20 is
    within 16 MiB of epoch 5's, and of epoch 1's."""
    rss = rss_per_epoch()
    assert len(rss) == 20
    assert rss[19] <= rss[4] + 16, rss
    assert rss[19] <= rss[0] + 16, rss
