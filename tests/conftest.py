"""Shared pytest setup: CUDA skipping. Helpers for tests live in helpers.py."""
from __future__ import annotations

import inspect
import os

import pytest
import torch

import seqrec
from helpers import DEVICES, SHARED_DATA, shared_dataset  # noqa: F401  (re-exported)


def _mark_by_what_it_runs(item) -> None:
    """Set the markers `make test-fast` deselects from what a test (or a fixture it uses)
    calls, so they cannot drift from the code: `shared_data` for shared_dataset(...),
    `compile` for torch.compile(...)."""
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        funcs += [d.func for d in defs]
    source = ""
    for func in funcs:
        try:
            source += inspect.getsource(func)
        except (TypeError, OSError):  # builtins, fixtures without source
            pass
    if "shared_dataset(" in source:
        item.add_marker(pytest.mark.shared_data)
    if "torch.compile(" in source:
        item.add_marker(pytest.mark.compile)


def pytest_collection_modifyitems(config, items):
    for item in items:
        _mark_by_what_it_runs(item)
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
