"""Shared pytest setup: CUDA skipping. Helpers for tests live in helpers.py."""
from __future__ import annotations

import inspect
import os

import pytest
import torch

import seqrec
from helpers import DEVICES, SHARED_DATA, shared_dataset  # noqa: F401  (re-exported)


@pytest.fixture
def one_thread():
    """Tiny-tensor work on one intra-op thread: on the shared 2-core CI machine under load,
    two OpenMP threads per op made such files 9-20x slower (test_s3rec.py: 280 s vs 30 s),
    hand-offs costing far more than they save. Results do not depend on the thread count
    (test_seq_mask checks the op; the rest is torch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def require_cuda_problem(has_cuda: bool, cuda_built: bool) -> str | None:
    """Why SEQREC_REQUIRE_CUDA=1 cannot be honoured, or None. It means real CUDA kernels:
    a build whose ops run their plain-PyTorch reference on CUDA does not qualify."""
    from seqrec.ops._registry import REFERENCE_ON_CUDA

    if not has_cuda:
        return "SEQREC_REQUIRE_CUDA=1 but no CUDA device is available"
    if not cuda_built:
        return "SEQREC_REQUIRE_CUDA=1 but seqrec was built without CUDA kernels"
    if REFERENCE_ON_CUDA:
        return ("SEQREC_REQUIRE_CUDA=1 but these ops have no compiled CUDA kernel (they run the "
                f"plain-PyTorch reference on CUDA): {', '.join(sorted(REFERENCE_ON_CUDA))}")
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        _mark_by_what_it_runs(item)
    require_cuda = os.environ.get("SEQREC_REQUIRE_CUDA") == "1"
    has_cuda = torch.cuda.is_available()
    if require_cuda:
        problem = require_cuda_problem(has_cuda, seqrec.cuda_built())
        if problem:
            raise pytest.UsageError(problem)
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
