"""The one switch between the compiled operators and their plain-PyTorch references.

``backend="seqrec"`` (default) runs the C++/CUDA kernels; ``backend="reference"`` runs
``seqrec.ops.reference``, the same math in plain PyTorch (slow, but handy to debug and
the baseline of every test and benchmark). Models take a ``backend=`` argument; this
module holds the process-wide default used when they don't.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

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


def has_kernel(op: str, x: torch.Tensor) -> bool:
    """Whether ``torch.ops.seqrec.<op>`` has a compiled kernel for ``x``'s device (the CPU
    always; CUDA where this build has one). Wrappers run the reference math elsewhere."""
    if x.device.type == "cpu":
        return True
    key = {"cuda": "CUDA"}.get(x.device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"seqrec::{op}", key)
