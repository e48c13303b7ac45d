"""Shared pytest setup: CUDA skipping. Helpers for tests live in helpers.py."""
from __future__ import annotations

import os

import pytest
import torch

import seqrec
from helpers import DEVICES, SHARED_DATA, shared_dataset  # noqa: F401  (re-exported)


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
