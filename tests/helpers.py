"""Test helpers importable from any test module (``tests/`` is on pytest's pythonpath)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEQREC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Parametrise tests over devices with this; CUDA cases skip without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def shared_dataset(name: str) -> Path:
    """Path of ../shared/data/<name>, or skip the test when it is absent (a user's clone)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name!r} not found at {path} (set SEQREC_SHARED_DATA)")
    return path
