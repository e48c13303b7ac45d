"""Download the public datasets of :mod:`seqrec.data.registry`: resumable, verified, atomic.

    from seqrec.data.download import download_dataset
    folder = download_dataset("Beauty", "data")      # data/Beauty/Beauty.txt + _item2attributes.json

Each file is fetched into ``<file>.part`` (a partial one is continued with an HTTP Range
request), its size and SHA-256 are checked against the registry, and only then renamed
to its final name; a mismatch deletes the part and raises. A file already in place and
matching its checksum is not fetched again. A dataset whose registry entry has no pinned
checksum is refused unless ``verify=False`` (``--no-verify``), and the size and SHA-256
received are then printed. Only the standard library is used (urllib).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from ..progress import progress_bar
from .registry import DatasetSource, Pinned, RemoteFile, find_dataset

CHUNK = 1 << 16
TIMEOUT_S = 60.0
USER_AGENT = "seqrec-data-download"


class DownloadError(RuntimeError):
    """A download failed: network, HTTP status, checksum or archive content; the
    message names the URL or file and the cause."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(path: Path, pinned: Pinned) -> str | None:
    """None when ``path`` is what ``pinned`` says, else what differs."""
    size = path.stat().st_size
    if pinned.size is not None and size != pinned.size:
        return f"{size} bytes, expected {pinned.size}"
    if pinned.sha256 is not None:
        digest = sha256_of(path)
        if digest != pinned.sha256:
            return f"SHA-256 {digest}, expected {pinned.sha256}"
    return None


def fetch(url: str, dest: str | Path, pinned: Pinned = Pinned(), *, progress: bool | None = None,
          timeout: float = TIMEOUT_S, log: Callable[[str], None] | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial part with a
    Range request, check it against ``pinned`` and rename it into place.

    Raises:
        DownloadError: the server cannot be reached (the URL and the cause are named),
            answers with an HTTP error, or the file differs from ``pinned`` (the part is
            deleted, so the next try starts afresh).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part already holds the whole file
            response = None
        else:
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:  # offline, DNS, refused, timeout
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {url}: {reason} (offline, or the host is unreachable; "
                            f"rerun to resume{f' from byte {offset}' if offset else ''})") from None
    if response is not None:
        with response:
            if offset and response.status != 206:  # the server ignored the range: start over
                offset = 0
            if offset and log:
                log(f"resuming {dest.name} at byte {offset}")
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else pinned.size
            with open(part, "ab" if offset else "wb") as out, progress_bar(
                    progress=progress, total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, leave=False) as bar:
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
                except OSError as exc:  # connection dropped mid-file: keep the part to resume
                    raise DownloadError(f"download of {url} interrupted after {out.tell()} bytes: {exc}; "
                                        "rerun to resume") from None
    problem = _matches(part, pinned)
    if problem is not None:
        part.unlink()
        raise DownloadError(f"{url}: the download does not match its pinned checksum ({problem}); deleted "
                            f"{part}. Rerun to download again; if it persists the source has changed")
    os.replace(part, dest)
    return dest


def _extract(archive: Path, folder: Path, members: dict[str, Pinned]) -> list[Path]:
    """Take ``members`` (by base name) out of the zip ``archive`` into ``folder``, each
    through a ``.part`` file checked against its pin, renamed only when all are good."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        archive.unlink()
        raise DownloadError(f"{archive}: not a zip archive ({exc}); deleted it, rerun to download again") from None
    with zf:
        by_name = {Path(info.filename).name: info for info in zf.infolist() if not info.is_dir()}
        missing = [name for name in members if name not in by_name]
        if missing:
            raise DownloadError(f"{archive}: has no {', '.join(missing)} (it holds {', '.join(sorted(by_name))})")
        parts = []
        try:
            for name, pinned in members.items():
                part = folder / (name + ".part")
                with zf.open(by_name[name]) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                parts.append(part)
                problem = _matches(part, pinned)
                if problem is not None:
                    raise DownloadError(f"{archive}: {name} does not match its pinned checksum ({problem}); "
                                        "deleted the archive and what was extracted, rerun to download again")
        except BaseException:
            for part in parts:
                part.unlink(missing_ok=True)
            if archive.exists():
                archive.unlink()
            raise
    done = []
    for name in members:
        os.replace(folder / (name + ".part"), folder / name)
        done.append(folder / name)
    archive.unlink()
    return done


def _in_place(folder: Path, remote: RemoteFile) -> bool:
    """Whether every output of ``remote`` is already there and matches its pin (files
    without a pin count when present)."""
    pins = remote.members if remote.members is not None else {remote.name: remote.pinned}
    return all((folder / name).exists() and _matches(folder / name, pin) is None for name, pin in pins.items())


def download_dataset(name: str, to: str | Path = "data", *, verify: bool = True, progress: bool | None = None,
                     source: DatasetSource | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Download dataset ``name`` of the registry into ``to/<name>/`` and return that folder.

    ``verify=False`` accepts files without a pinned checksum (their size and SHA-256 are
    reported through ``log``); pinned files are always checked. ``source`` replaces the
    registry entry (tests). ``log`` receives one line per event (default: stderr).
    """
    source = source or find_dataset(name)
    log = log or (lambda line: print(line, file=sys.stderr))
    unpinned = [f.url for f in source.files if not f.verifiable]
    if unpinned and verify:
        raise DownloadError(f"no pinned checksum for {source.name} ({', '.join(unpinned)}): seqrec cannot check "
                            "what it would receive; pass --no-verify (verify=False) to accept an unverified "
                            "download")
    folder = Path(to) / source.name
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _download_files(source, folder, progress, log)
    except BaseException:
        if created and not any(folder.iterdir()):  # leave no empty folder behind a failure
            folder.rmdir()
        raise
    return folder


def _download_files(source: DatasetSource, folder: Path, progress: bool | None, log: Callable[[str], None]) -> None:
    for remote in source.files:
        if _in_place(folder, remote):
            log(f"{folder / remote.outputs[0]}{' etc.' if len(remote.outputs) > 1 else ''}: already there")
            continue
        target = fetch(remote.url, folder / remote.name, remote.pinned, progress=progress, log=log)
        outputs = [target] if remote.members is None else _extract(target, folder, remote.members)
        for path in outputs:
            pin = remote.pinned if remote.members is None else remote.members[path.name]
            if pin.verifiable:
                log(f"{path}: {path.stat().st_size} bytes, SHA-256 verified")
            else:
                log(f"{path}: {path.stat().st_size} bytes, SHA-256 {sha256_of(path)} (UNVERIFIED: no pinned checksum)")
