"""Prepared datasets: a :class:`SequenceDataset` written once as memory-mapped arrays.

``seqrec data prepare --data X --out cache/`` (or :func:`prepare_dataset`) parses ``X``
once and writes a folder of NumPy ``.npy`` files (the CSR offsets and items, the
timestamps, the id maps, the attribute tables) and ``manifest.json``, which lists every
file with its size and SHA-256 and carries its own checksum (:func:`seqrec.utils.write_json`).
The folder is written under a temporary name and renamed when complete, so a killed
``prepare`` leaves nothing that could be mistaken for a prepared dataset.

:func:`open_prepared` maps the arrays with ``np.load(mmap_mode="r")``: opening reads no
data but the id maps, and every process that opens the folder (DDP ranks, data-loader
workers) shares one copy of the arrays in the page cache instead of holding its own.
The arrays are read-only.

Tokens (raw user / item / attribute ids) are stored as one UTF-8 blob of the tokens
joined by newlines and the code-point offsets of each token, so a token may hold any
character (a newline too: then the offsets cut it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from ..utils import ChecksumError, read_json, write_json
from .attributes import AttributeField
from .dataset import DataError, SequenceDataset

FORMAT = "seqrec-prepared"
VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 16 << 20


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`prepare_dataset` (has a manifest)."""
    return (Path(path) / MANIFEST).is_file()


def prepare_dataset(dataset: SequenceDataset, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``dataset`` to the folder ``out`` for :func:`open_prepared`; returns ``out``.

    ``out`` must not exist, or ``overwrite=True`` replaces a folder that is itself a
    prepared dataset (never any other folder). Raises FileExistsError otherwise.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
        if not is_prepared(out):
            raise FileExistsError(f"{out}: exists and is not a prepared dataset (no {MANIFEST}); "
                                  "refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = _write_arrays(dataset, tmp)
        write_json(tmp / MANIFEST, manifest, default=_json_value)
        if out.exists():
            # Moved aside first, so `out` is never a half-replaced mix of two datasets.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def open_prepared(path: str | os.PathLike, *, verify: bool = True) -> SequenceDataset:
    """The dataset of a folder written by :func:`prepare_dataset`, its arrays memory-mapped.

    ``verify=True`` (default) checks every file's SHA-256 against the manifest (this reads
    the files once, which also warms the page cache the later reads use); ``verify=False``
    checks only the files' sizes, dtypes and shapes, and the dataset's own invariants.
    A folder whose files do not match its manifest raises DataError naming the file.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise DataError(f"{path}: no such folder" if not path.exists() else f"{path}: is not a folder")
    if not manifest_path.is_file():
        raise DataError(f"{path}: is not a prepared dataset (no {MANIFEST}; write one with "
                        f"`seqrec data prepare --data SOURCE --out {path}`)")
    try:
        manifest = read_json(manifest_path)
    except ChecksumError as exc:
        raise DataError(str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise DataError(f"{manifest_path}: format version {manifest.get('version')!r}; this seqrec reads version "
                        f"{VERSION} (prepare the dataset again)")
    files = manifest["files"]
    on_disk = {p.name for p in path.iterdir()} - {MANIFEST}
    extra = sorted(on_disk - set(files))
    if extra:
        raise DataError(f"{path}: holds files its manifest does not list: {extra[:5]} (the folder was changed "
                        "after `seqrec data prepare`; prepare it again)")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise DataError(f"{file}: listed in {MANIFEST} but missing (prepare the dataset again)")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise DataError(f"{file}: {size} bytes, the manifest says {entry['bytes']} (the file was changed after "
                            "`seqrec data prepare`; prepare the dataset again)")
    if verify:
        with ThreadPoolExecutor(max_workers=min(4, max(1, len(files)))) as pool:  # hashlib releases the GIL
            digests = dict(zip(files, pool.map(lambda n: _sha256(path / n), files)))
        for name, entry in files.items():
            if digests[name] != entry["sha256"]:
                raise DataError(f"{path / name}: content does not match {MANIFEST} (SHA-256 differs: changed or "
                                "damaged after `seqrec data prepare`; prepare the dataset again)")

    def array(name: str) -> np.ndarray:
        entry = files[name]
        try:
            arr = np.load(path / name, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path / name}: not a NumPy array file ({exc})") from None
        if str(arr.dtype) != entry["dtype"] or list(arr.shape) != entry["shape"]:
            raise DataError(f"{path / name}: holds {arr.dtype} {list(arr.shape)}, the manifest says "
                            f"{entry['dtype']} {entry['shape']}")
        return arr

    def tokens(spec: dict) -> list[str]:
        try:
            return _read_tokens(array(spec["text"]), array(spec["offsets"]), spec["newline_joined"])
        except DataError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise DataError(f"{path / spec['text']}: {exc}") from None

    metadata = dict(manifest["metadata"])
    for key, name in manifest["metadata_arrays"].items():
        metadata[key] = array(name)
    attributes = {}
    for spec in manifest["attributes"]:
        attributes[spec["name"]] = AttributeField(
            spec["name"], spec["kind"], array(spec["indptr"]), array(spec["values"]),
            tokens(spec["tokens"]) if spec["tokens"] else [])
    return SequenceDataset(
        array("indptr.npy"), array("items.npy"), tokens(manifest["user_tokens"]),
        [""] + tokens(manifest["item_tokens"]), attributes, name=manifest["name"], metadata=metadata,
        timestamps=array("timestamps.npy") if "timestamps.npy" in files else None)


# ---------------------------------------------------------------------- writing

def _write_arrays(dataset: SequenceDataset, folder: Path) -> dict:
    files: dict[str, dict] = {}

    def save(name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        with open(folder / name, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        files[name] = {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name),
                       "dtype": str(arr.dtype), "shape": list(arr.shape)}
        return name

    def save_tokens(stem: str, values: Sequence[str]) -> dict:
        text, offsets, newline_joined = _token_arrays(values)
        return {"text": save(f"{stem}.text.npy", text), "offsets": save(f"{stem}.offsets.npy", offsets),
                "newline_joined": newline_joined}

    save("indptr.npy", dataset.indptr.astype(np.int64, copy=False))
    save("items.npy", dataset.items.astype(np.int64, copy=False))
    if dataset.timestamps is not None:
        save("timestamps.npy", dataset.timestamps.astype(np.float64, copy=False))
    manifest = {
        "format": FORMAT, "version": VERSION, "name": dataset.name,
        "num_users": dataset.num_users, "num_items": dataset.num_items,
        "num_interactions": dataset.num_interactions,
        "user_tokens": save_tokens("user_tokens", dataset.user_tokens),
        "item_tokens": save_tokens("item_tokens", dataset.item_tokens[1:]),
        "attributes": [],
        "metadata": {}, "metadata_arrays": {},
    }
    for i, (name, field) in enumerate(dataset.attributes.items()):
        manifest["attributes"].append({
            "name": name, "kind": field.kind,
            "indptr": save(f"attr{i}.indptr.npy", np.asarray(field.indptr, np.int64)),
            "values": save(f"attr{i}.values.npy", np.asarray(field.values)),
            "tokens": save_tokens(f"attr{i}.tokens", field.tokens) if field.tokens else None,
        })
    for i, (key, value) in enumerate(dataset.metadata.items()):
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            manifest["metadata_arrays"][key] = save(f"meta{i}.npy", value)
        else:
            manifest["metadata"][key] = value
    manifest["files"] = files
    return manifest


def _token_arrays(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(utf-8 bytes of the newline-joined tokens, code-point offset of each token's start
    and of the end, whether splitting at newlines gives the tokens back)``."""
    values = [str(v) for v in values]
    joined = "\n".join(values)
    newline_joined = joined.count("\n") == max(len(values) - 1, 0)
    lengths = np.fromiter(map(len, values), np.int64, len(values)) + 1  # each token and its newline
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    text = np.frombuffer(joined.encode("utf-8", "surrogatepass"), np.uint8)
    return text, offsets, newline_joined


def _read_tokens(text: np.ndarray, offsets: np.ndarray, newline_joined: bool) -> list[str]:
    count = len(offsets) - 1
    if count <= 0:
        return []
    try:
        joined = text.tobytes().decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise DataError(f"token file is not UTF-8 at byte {exc.start}") from None
    if len(joined) + 1 != int(offsets[-1]):
        raise DataError(f"token file holds {len(joined)} characters, its offsets say {int(offsets[-1]) - 1}")
    if newline_joined:
        out = joined.split("\n")
        if len(out) != count:
            raise DataError(f"token file holds {len(out)} tokens, its offsets say {count}")
        return out
    starts = offsets[:-1].tolist()
    ends = (offsets[1:] - 1).tolist()
    return [joined[a:b] for a, b in zip(starts, ends)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _json_value(value):
    """Metadata values JSON lacks: NumPy scalars and arrays of objects, tuples as lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"metadata value of type {type(value).__name__} cannot be written to the manifest "
                     "(metadata must be JSON values or NumPy arrays)")
