"""Load the compiled core after checking it was built against the running torch.

The extension uses torch's ordinary (non-stable) C++ ABI, which is tied to the exact
torch version it was compiled against. A mismatch would crash at the first op call,
so it is turned into a clear ImportError here instead.
"""
from __future__ import annotations

import torch

try:
    from . import _build_info
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "seqrec's compiled core is missing (no seqrec/_build_info.py). Install the package "
        "with `pip install --no-build-isolation -e .` (see README.md) rather than putting "
        "python/ on sys.path."
    ) from exc


def _base_version(version: str) -> str:
    return version.split("+")[0]


if _base_version(_build_info.TORCH_VERSION) != _base_version(torch.__version__):
    raise ImportError(
        f"seqrec was compiled against torch {_build_info.TORCH_VERSION} but torch "
        f"{torch.__version__} is running; rebuild with "
        "`pip install --no-build-isolation --no-deps -e .`"
    )

from . import _C  # noqa: E402  (registers torch.ops.seqrec.*)

__all__ = ["_C", "_build_info"]
