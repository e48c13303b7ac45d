"""The one switch between the compiled operators and their plain-PyTorch references.

``backend="seqrec"`` (default) runs the operators, whatever kernel the dispatcher holds
for the device (``seqrec.ops._registry``); ``backend="reference"`` runs
``seqrec.ops.reference``, the same math in plain PyTorch (slow, but handy to debug and
the baseline of every test and benchmark). Models take a ``backend=`` argument; this
module holds the process-wide default used when they don't.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

BACKENDS = ("seqrec", "reference")
_default = "seqrec"


def _validate(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def get_backend(backend: str | None = None) -> str:
    """Resolve ``backend`` (None means the process-wide default)."""
    return _default if backend is None else _validate(backend)


def set_backend(backend: str) -> None:
    """Set the process-wide default backend."""
    global _default
    _default = _validate(backend)


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Temporarily change the process-wide default backend."""
    global _default
    previous, _default = _default, _validate(backend)
    try:
        yield
    finally:
        _default = previous

