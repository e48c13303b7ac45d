"""Progress is on wherever a person watches (a terminal, a notebook) and off in CI and logs."""
from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
import types

import pytest

from seqrec import progress
from seqrec.data import synthetic
from seqrec.models import build_model
from seqrec.progress import in_notebook, progress_enabled
from seqrec.train import TrainConfig, Trainer


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("flag, tty, env, notebook, expected", [
    (None, True, {}, False, True),                 # a terminal
    (None, False, {}, False, False),               # piped into a file or a log
    (None, True, {"CI": "true"}, False, False),    # CI, even on a pseudo-terminal
    (None, True, {"CI": "1"}, False, False),
    (None, True, {"CI": "false"}, False, True),    # CI explicitly off
    (None, True, {"CI": "0"}, False, True),
    (None, True, {"CI": ""}, False, True),
    (None, False, {}, True, True),                 # a notebook: its stderr is no terminal
    (None, False, {"CI": "true"}, True, False),    # notebooks executed by CI
    (True, False, {"CI": "true"}, False, True),    # --progress forces it
    (False, True, {}, True, False),                # --no-progress forces it off
])
def test_progress_decision(flag, tty, env, notebook, expected):
    assert progress_enabled(flag, _Stream(tty), environ=env, notebook=notebook) is expected


def test_streams_without_a_terminal_answer_count_as_logs():
    closed = io.StringIO()
    closed.close()
    assert progress_enabled(None, closed, environ={}, notebook=False) is False  # isatty raises ValueError
    assert progress_enabled(None, object(), environ={}, notebook=False) is False  # no isatty at all


def test_in_notebook_recognises_a_jupyter_kernel(monkeypatch):
    class ZMQInteractiveShell:  # the class name IPython's kernel shell has
        pass

    class TerminalInteractiveShell:
        pass

    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    fake.get_ipython = lambda: ZMQInteractiveShell()
    assert in_notebook()
    fake.get_ipython = lambda: TerminalInteractiveShell()  # ipython in a terminal: the TTY rule applies
    assert not in_notebook()
    fake.get_ipython = lambda: None  # IPython imported, but no shell running
    assert not in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not in_notebook()


def _tiny_trainer(progress_flag):
    ds = synthetic(num_users=80, num_items=40, seed=0)
    split = ds.leave_one_out(max_len=10)
    model = build_model("sasrec", num_items=ds.num_items, max_len=10, hidden_size=8, num_layers=1, num_heads=1)
    return Trainer(model, split, TrainConfig(epochs=2, batch_size=32, patience=0, sampled_negatives=10,
                                             progress=progress_flag))


def test_fit_prints_one_line_per_epoch_when_progress_is_on(capsys, monkeypatch):
    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    _tiny_trainer(True).fit()
    err = capsys.readouterr().err
    assert "epoch 1/2: loss " in err and "epoch 2/2: loss " in err and "valid NDCG@20 " in err
    _tiny_trainer(False).fit()
    assert capsys.readouterr().err == ""
    # a caller's own on_epoch replaces the line
    seen = []
    _tiny_trainer(True).fit(on_epoch=seen.append)
    assert len(seen) == 2 and "epoch 1/2: loss" not in capsys.readouterr().err


TRAIN = ["train", "--model", "sasrec", "--data", "synthetic", "--synthetic-users", "120", "--synthetic-items", "40",
         "--hidden-size", "8", "--num-layers", "1", "--max-len", "10", "--batch-size", "16", "--epochs", "1",
         "--sampled-negatives", "10"]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI runs these tests with CI=true
    return dict(env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _run_in_pty(argv, env, timeout=240.0) -> tuple[int, str]:
    """Run ``argv`` with stdin/stdout/stderr on a pseudo-terminal, as a person's shell would."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_cli_shows_a_bar_on_a_terminal_and_none_when_piped():
    argv = [sys.executable, "-m", "seqrec.cli", *TRAIN]
    rc, text = _run_in_pty(argv, _env())
    assert rc == 0, text
    assert "%|" in text and ("it/s" in text or "s/it" in text), text  # tqdm's bar
    assert "epoch   1 loss" in text

    piped = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=240)
    assert piped.returncode == 0, piped.stderr
    assert "epoch   1 loss" in piped.stderr
    assert "%|" not in piped.stderr and "\r" not in piped.stderr and "%|" not in piped.stdout
