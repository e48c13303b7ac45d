"""Shared pytest setup: device parametrisation, CUDA skipping, shared-data lookup."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import seqrec

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEQREC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    require_cuda = os.environ.get("SEQREC_REQUIRE_CUDA") == "1"
    has_cuda = torch.cuda.is_available()
    if has_cuda and require_cuda and not seqrec.cuda_built():
        raise pytest.UsageError("SEQREC_REQUIRE_CUDA=1 but seqrec was built without CUDA kernels")
    if has_cuda:
        return
    if require_cuda:
        raise pytest.UsageError("SEQREC_REQUIRE_CUDA=1 but no CUDA device is available")
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def shared_dataset(name: str) -> Path:
    """Path of ../shared/data/<name>, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name!r} not found at {path} (set SEQREC_SHARED_DATA)")
    return path
