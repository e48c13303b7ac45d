"""seqrec: sequential recommendation on a C++/CUDA operator core for PyTorch.

Models: SASRec, S3-Rec, DIF-SR, SINE, DSS (``seqrec.models``); operators
(``seqrec.ops``, also reachable as ``torch.ops.seqrec.*``); data engine
(``seqrec.data``); trainer and evaluator (``seqrec.train``, ``seqrec.eval``).
"""
from __future__ import annotations

from ._loader import _C, _build_info
from . import ops

__version__ = "0.1.0"


def cuda_built() -> bool:
    """True when this build contains the CUDA kernels."""
    return bool(_C.cuda_built())


__all__ = ["ops", "cuda_built", "__version__"]
