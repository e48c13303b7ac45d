"""One entry point that resolves a dataset name or path (used by the CLI)."""
from __future__ import annotations

from pathlib import Path

from .dataset import DataError, SequenceDataset
from .prepared import MANIFEST
from .synthetic import synthetic


def load_dataset(source: str, fmt: str | None = None, *, attributes: list[str] | None = None,
                 kcore: int | None = None, seed: int = 0,
                 synthetic_size: tuple[int, int] = (2000, 600)) -> SequenceDataset:
    """Load ``source``: ``"synthetic"``, an S3-Rec ``.txt`` file (or a folder holding
    ``<folder>.txt``), RecBole atomic files (``.inter`` file, stem or folder), or a
    ``.parquet`` file of interactions (user_id, item_id, timestamp; needs pyarrow), or a
    folder written by ``seqrec data prepare`` (memory-mapped, see :mod:`seqrec.data.prepared`).

    ``fmt`` forces the format (``"s3rec"``, ``"atomic"``, ``"parquet"`` or ``"prepared"``);
    otherwise it is inferred.
    ``attributes`` restricts the atomic ``.item`` fields loaded. ``kcore`` applies
    k-core filtering to users and items. ``synthetic_size`` is (users, items) of the
    synthetic dataset.
    """
    if source == "synthetic":
        ds = synthetic(num_users=synthetic_size[0], num_items=synthetic_size[1], seed=seed)
    else:
        path = Path(source)
        if fmt is None:
            fmt = _infer_format(path)
        if fmt == "s3rec":
            if path.is_dir():
                if not (path / f"{path.name}.txt").exists():
                    raise DataError(f"{path}: is a folder without {path.name}.txt in it")
                path = path / f"{path.name}.txt"
            if not path.exists():
                raise DataError(f"{path}: no such file")
            ds = SequenceDataset.from_s3rec(path)
        elif fmt == "atomic":
            ds = SequenceDataset.from_atomic(path, attributes)
        elif fmt == "parquet":
            ds = SequenceDataset.from_parquet(path)
        elif fmt == "prepared":
            ds = SequenceDataset.open_prepared(path)
        else:
            raise ValueError(f"format must be 's3rec', 'atomic', 'parquet' or 'prepared', got {fmt!r}")
    if kcore:
        ds = ds.kcore(kcore)
    return ds


def _infer_format(path: Path) -> str:
    if path.suffix == ".txt":
        return "s3rec"
    if path.suffix == ".inter":
        return "atomic"
    if path.suffix == ".parquet":
        return "parquet"
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return "prepared"
        if (path / f"{path.name}.txt").exists():
            return "s3rec"
        if (path / f"{path.name}.inter").exists():
            return "atomic"
    if path.with_name(path.name + ".inter").exists():
        return "atomic"
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".txt", ".inter"))
        if found:
            raise DataError(f"{path}: a folder is read when it holds {path.name}.txt or {path.name}.inter; "
                            f"it holds {found[:5]}: pass one of those files (or its .inter stem)")
    raise DataError(f"{path}: cannot tell the format (expected a .txt S3-Rec file, .inter atomic files, "
                    "or a folder holding one); pass --format")
