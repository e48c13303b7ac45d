"""seqrec: sequential recommendation on a C++/CUDA operator core for PyTorch.

Models: SASRec, S3-Rec, DIF-SR, SINE, DSS (``seqrec.models``); operators
(``seqrec.ops``, also reachable as ``torch.ops.seqrec.*``); data engine
(``seqrec.data``); trainer and evaluator (``seqrec.train``, ``seqrec.eval``).
"""
from __future__ import annotations

from ._loader import _C, _build_info
from . import ops

__version__ = "0.1.0"


def from_pretrained(folder, *, backend: str | None = None, device="cpu"):
    """Load a model saved with ``model.save_pretrained(folder)`` (no dataset, no pickle);
    see :func:`seqrec.saved.from_pretrained`."""
    from .saved import from_pretrained as _from_pretrained

    return _from_pretrained(folder, backend=backend, device=device)


def cuda_built() -> bool:
    """True when this build contains the CUDA kernels."""
    return bool(_C.cuda_built())


__all__ = ["ops", "cuda_built", "from_pretrained", "__version__"]
