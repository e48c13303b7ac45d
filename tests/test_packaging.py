"""Packaging. The sdist carries what builds seqrec, not the repository's archived run records, and
the CMake configuration refuses a build folder made for another interpreter or torch."""
from __future__ import annotations

import subprocess
import sys
import tarfile

import pytest

from helpers import REPO_ROOT


def test_sdist_leaves_out_benchmark_results(tmp_path):
    pytest.importorskip("scikit_build_core")
    if not (REPO_ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    code = f"from scikit_build_core.build import build_sdist; print(build_sdist({str(tmp_path)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (sdist,) = tmp_path.glob("seqrec-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    assert not [n for n in names if n.startswith(("benchmarks/results", "runs/", "build/", "data/", ".venv"))]
    # what a build from the sdist needs is there (the data engine and the data package included)
    for needed in ("CMakeLists.txt", "pyproject.toml", "csrc/bindings.cpp", "csrc/data/readers.cpp",
                   "python/seqrec/data/registry.py", "python/seqrec/cli.py", "README.md"):
        assert needed in names, needed
    assert sdist.stat().st_size < 1_000_000  # the records alone are megabytes


def test_cmake_refuses_a_build_folder_made_for_another_torch(tmp_path):
    import shutil

    cmake = shutil.which("cmake")
    if cmake is None or not (REPO_ROOT / "CMakeLists.txt").exists():
        pytest.skip("needs cmake and a source checkout")
    # A build folder whose cache says another interpreter / torch configured it.
    other = "/elsewhere/bin/python with torch 2.0.0"
    done = subprocess.run([cmake, "-S", str(REPO_ROOT), "-B", str(tmp_path / "build"),
                           f"-DPython_EXECUTABLE={sys.executable}", f"-DSEQREC_BUILT_FOR={other}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    text = " ".join(done.stderr.split())  # CMake wraps long messages
    assert f"was configured for {other}, not for {sys.executable} with torch" in text, done.stderr
    assert "build-dir=build/{wheel_tag}-torch" in text


def test_cmake_names_pip_build_isolation_when_torch_is_missing(tmp_path):
    import os
    import shutil

    cmake = shutil.which("cmake")
    if cmake is None or not (REPO_ROOT / "CMakeLists.txt").exists():
        pytest.skip("needs cmake and a source checkout")
    # What pip's isolated build looks like from CMake: PYTHONPATH in a pip-build-env-*
    # folder, where torch cannot be imported.
    isolated = tmp_path / "pip-build-env-abc" / "site"
    isolated.mkdir(parents=True)
    (isolated / "torch.py").write_text("raise ImportError('No module named torch')\n")
    done = subprocess.run([cmake, "-S", str(REPO_ROOT), "-B", str(tmp_path / "build"),
                           f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(isolated)))
    assert done.returncode != 0
    text = " ".join(done.stderr.split())
    assert "could not import torch" in text and "pip's build isolation" in text, done.stderr
    assert "pip install --no-build-isolation <path to seqrec or its sdist>" in text
