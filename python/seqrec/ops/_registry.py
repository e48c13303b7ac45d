"""The dispatch policy of seqrec's operators, enforced in torch's dispatcher.

Every ``seqrec::`` op has a kernel on every device the models run on: the compiled CPU
kernel (``csrc/bindings.cpp``), and on CUDA the compiled CUDA kernel where this build
has one, else the op's plain-PyTorch reference, registered here as the op's CUDA
kernel. So a wrapper never asks which device it is on: it calls the op and the
dispatcher picks. The fallback is registered from Python (``torch.library.
register_kernel``) rather than as a C++ kernel because the references are Python; it
is registered only where the compiled library left the CUDA slot empty, so a real CUDA
kernel added to bindings.cpp's CUDA block replaces it without touching this file.

:data:`REFERENCE_ON_CUDA` names the ops whose CUDA kernel is the reference;
``SEQREC_REQUIRE_CUDA=1`` (tests/conftest.py) demands that it be empty.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["REFERENCE_ON_CUDA", "register_cuda_reference"]

REFERENCE_ON_CUDA: set[str] = set()


def register_cuda_reference(name: str, fn: Callable) -> None:
    """Register ``fn`` (the reference, with the schema's signature) as the CUDA kernel
    of ``seqrec::<name>``, unless the compiled library registered one."""
    qualname = f"seqrec::{name}"
    if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"):
        return
    torch.library.register_kernel(qualname, "cuda", fn)
    REFERENCE_ON_CUDA.add(name)
