"""Test helpers importable from any test module (``tests/`` is on pytest's pythonpath)."""
from __future__ import annotations

import json
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


# ---------------------------------------------------------------- prepared datasets
# A small prepared folder (`seqrec data prepare`) and the ways tests damage it: shared by
# tests/test_data_prepared.py and the hostile-input table of tests/test_hostile_data.py.
def prepared_folder(tmp: Path, name: str = "c") -> Path:
    from seqrec.data import synthetic

    return synthetic(num_users=30, num_items=20, seed=0).prepare(tmp / name)


def flip_last_bytes(path: Path) -> bytes:
    """Change one bit near the end of ``path`` (same size: only a checksum can tell);
    returns the new content."""
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01
    path.write_bytes(bytes(data))
    return bytes(data)


def add_stray_file(folder: Path, name: str = "stray.npy") -> Path:
    (folder / name).write_bytes(b"x")
    return folder / name


def edit_manifest(folder: Path) -> None:
    """An edit of manifest.json that its own checksum catches (one more user)."""
    from seqrec.data.prepared import MANIFEST

    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["num_users"] += 1
    (folder / MANIFEST).write_text(json.dumps(manifest))
