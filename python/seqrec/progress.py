"""When seqrec shows progress: wherever a person is watching, and nowhere else.

* forced by the caller (``--progress`` / ``--no-progress``, ``TrainConfig(progress=...)``);
* off under CI (the ``CI`` environment variable set to anything but ``""``, ``0``,
  ``false``, ``no``): CI logs are files, a bar there is a screenful of carriage returns;
* on in a Jupyter kernel (``tqdm.auto`` draws a widget; ipywidgets is in the
  ``notebooks`` extra, without it tqdm falls back to text and warns);
* otherwise on exactly when the stream written to (stderr) is a terminal: off when it is
  piped into a file or a log.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, TextIO

_FALSE = ("", "0", "false", "no", "off")


def in_notebook() -> bool:
    """True inside a Jupyter (ZMQ) kernel; never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too broken to ask is not a notebook we can draw in
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_enabled(flag: bool | None = None, stream: TextIO | None = None,
                     environ: Mapping[str, str] | None = None, notebook: bool | None = None) -> bool:
    """Whether to show progress: ``flag`` when given; else off under CI, on in a notebook,
    else whether ``stream`` (default ``sys.stderr``) is a terminal. ``environ`` and
    ``notebook`` default to the real environment (parameters for tests)."""
    if flag is not None:
        return bool(flag)
    environ = os.environ if environ is None else environ
    if environ.get("CI", "").strip().lower() not in _FALSE:
        return False
    if in_notebook() if notebook is None else notebook:
        return True
    return _isatty(sys.stderr if stream is None else stream)


def progress_bar(iterable=None, *, progress: bool | None = None, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, shown when :func:`progress_enabled` says so.

    A pseudo-terminal created without a size (``script``, a CI runner's pty, a test)
    reports 0 columns and 0 rows, and tqdm then draws nothing at all: such a terminal is
    taken as 80 x 24."""
    from tqdm.auto import tqdm

    enabled = progress_enabled(progress)
    if enabled and not in_notebook():
        try:
            size = os.get_terminal_size(sys.stderr.fileno())
            if size.columns == 0:
                kwargs.setdefault("ncols", 80)
            if size.lines == 0:
                kwargs.setdefault("nrows", 24)
        except (AttributeError, ValueError, OSError):  # no descriptor: tqdm decides
            pass
    return tqdm(iterable, disable=not enabled, **kwargs)


def progress_stream() -> TextIO:
    """Where per-epoch lines go: the notebook's output cell (stdout), else stderr."""
    return sys.stdout if in_notebook() else sys.stderr
