"""Small shared helpers: files written whole and checksummed, the run-folder lock, malloc."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import struct
import tempfile
import warnings
from pathlib import Path

# Temporary files of atomic_write: ".<name>.<8 random characters of mkstemp>.tmp" beside <name>.
_TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX) + "$")


class NoSpaceError(OSError):
    """The disk (or quota) filled up while :func:`atomic_write` wrote a file; the file's
    previous version, if any, is untouched and the temporary file is removed."""

    def __init__(self, path, had_previous: bool):
        self.message = (f"no space left on device while writing {path}; "
                        + (f"the previous {Path(path).name} is intact" if had_previous else "nothing was written"))
        super().__init__(errno.ENOSPC, self.message, str(path))

    def __str__(self) -> str:
        return self.message


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    # torch.save straight into a file: its zip writer reports a short write (what a full
    # disk causes) as "[enforce fail at inline_container.cc:...] . unexpected pos N vs M".
    return isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "No space left on device" in str(exc))


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
    """Write to a temporary file beside ``path`` and rename it over ``path`` on success,
    so a crash never leaves a half-written file behind: ``path`` holds either its previous
    content or the new one. A full disk raises :class:`NoSpaceError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if _is_disk_full(exc):
            raise NoSpaceError(path, path.exists()) from exc
        raise


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / file system can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def stale_temp_files(folder, names: re.Pattern) -> list[Path]:
    """Temporary files :func:`atomic_write` left in ``folder`` for the files whose names
    match ``names`` (whole name), as a write killed before its rename leaves them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and names.fullmatch(match.group("name")) and entry.is_file():
            found.append(entry)
    return sorted(found)


# ---------------------------------------------------------------------------- checksums
# Every file seqrec writes carries the SHA-256 of its content, inside the file itself so
# that one rename publishes content and checksum together (a kill can never leave them
# disagreeing):
#   * torch files (zip archives): the ZIP archive comment "seqrec-sha256:<hex>" (a field
#     of the format that torch.load, zipfile and unzip read past), over every byte before it;
#   * JSON files: a top-level "checksum": "sha256:<hex>";  JSON lines: one per line;
#     over the canonical JSON (sorted keys, no spaces) of the value without it.
CHECKSUM_KEY = "checksum"
_ZIP_COMMENT_PREFIX = b"seqrec-sha256:"
_ZIP_COMMENT_LEN = len(_ZIP_COMMENT_PREFIX) + 64
_ZIP_EOCD = b"PK\x05\x06"  # end of central directory record: 22 bytes + the comment


class ChecksumError(ValueError):
    """A file's content does not match the checksum seqrec wrote with it: it was changed
    (damaged on disk, edited, truncated) after it was written."""


def save_torch(obj, path) -> None:
    """``torch.save(obj)`` to ``path``, atomically, with its checksum (:func:`load_torch`)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    view = buf.getbuffer()
    if len(view) < 22 or bytes(view[-22:-18]) != _ZIP_EOCD or bytes(view[-2:]) != b"\0\0":
        raise RuntimeError("torch.save did not write a zip archive without comment; cannot add the checksum")
    length = struct.pack("<H", _ZIP_COMMENT_LEN)
    digest = hashlib.sha256(view[:-2])
    digest.update(length)
    try:
        with atomic_write(path, "wb") as fh:
            fh.write(view[:-2])
            fh.write(length + _ZIP_COMMENT_PREFIX + digest.hexdigest().encode())
    finally:
        del view  # release the buffer export before buf goes


def load_torch(path):
    """``torch.load`` a file written by :func:`save_torch` (onto the CPU) after checking
    its checksum.

    A file without one (written by a seqrec that did not checksum, or by other code) loads
    with a warning that its content is not verified.

    Raises:
        ChecksumError: the content differs from what was written (names the file).
        ValueError: not a file torch can read (names the file).
    """
    import torch

    path = Path(path)
    data = path.read_bytes()
    checked = _verify_zip_checksum(data, path)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from exc
    if not checked:
        warnings.warn(f"{path}: has no checksum (written before seqrec checksummed its files, or by other code); "
                      "loaded without verifying its content", stacklevel=2)
    return obj


def verify_torch_file(path) -> bool:
    """Check the checksum of a file written by :func:`save_torch` without loading it: True
    when it matches, False when the file has none; :class:`ChecksumError` when it differs."""
    path = Path(path)
    return _verify_zip_checksum(path.read_bytes(), path)


def _verify_zip_checksum(data: bytes, path: Path) -> bool:
    """True when ``data`` carries a matching seqrec checksum, False when it carries none."""
    n = _ZIP_COMMENT_LEN
    comment = data[-n:]
    if not (len(data) >= 22 + n and comment.startswith(_ZIP_COMMENT_PREFIX)
            and data[-n - 22:-n - 18] == _ZIP_EOCD):
        if _ZIP_COMMENT_PREFIX in data[-4096:]:  # our marker, but not where it belongs
            raise ChecksumError(f"{path}: damaged: its checksum trailer is not at the end of the file "
                                "(truncated or appended to after seqrec wrote it)")
        return False
    expected = comment[len(_ZIP_COMMENT_PREFIX):].decode("ascii", "replace")
    actual = hashlib.sha256(memoryview(data)[:-n]).hexdigest()
    if actual != expected:
        raise ChecksumError(f"{path}: checksum mismatch: the file changed after seqrec wrote it (damaged on disk "
                            f"or edited; SHA-256 {actual[:16]}..., written as {expected[:16]}...); it cannot be "
                            "trusted")
    return True


def _json_digest(value) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _sealed(value: dict, default=None) -> dict:
    """``value`` as it reads back from JSON, with its checksum added."""
    plain = json.loads(json.dumps(value, default=default))
    if not isinstance(plain, dict) or CHECKSUM_KEY in plain:
        raise ValueError(f"a checksummed JSON value must be an object without a {CHECKSUM_KEY!r} key")
    plain[CHECKSUM_KEY] = _json_digest(plain)
    return plain


def _unsealed(value, where: str) -> tuple[dict, bool]:
    """``(value without its checksum, whether it had one)``; ChecksumError on a mismatch."""
    if not isinstance(value, dict) or CHECKSUM_KEY not in value:
        return value, False
    value = dict(value)
    expected = value.pop(CHECKSUM_KEY)
    if _json_digest(value) != expected:
        raise ChecksumError(f"{where}: checksum mismatch: the content changed after seqrec wrote it (damaged on "
                            "disk or edited); it cannot be trusted")
    return value, True


def write_json(path, value: dict, *, indent: int | None = 2, default=None) -> None:
    """Write the JSON object ``value`` to ``path`` atomically, with its checksum
    (:func:`read_json`). ``default`` as in :func:`json.dumps`."""
    with atomic_write(path) as fh:
        json.dump(_sealed(value, default), fh, indent=indent)
        fh.write("\n")


def read_json(path) -> dict:
    """The JSON object of a file written by :func:`write_json`, its checksum checked
    (and removed). A file without one loads with a warning.

    Raises:
        ChecksumError: the content differs from what was written (names the file).
        ValueError: not JSON (names the file and the position).
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    value, checked = _unsealed(value, str(path))
    if not checked:
        warnings.warn(f"{path}: has no checksum; read without verifying its content", stacklevel=2)
    return value


def json_line(record: dict, default=None) -> str:
    """One line of a checksummed JSON-lines file (:func:`read_jsonl`), newline included."""
    return json.dumps(_sealed(record, default)) + "\n"


def write_jsonl(path, records, default=None) -> None:
    """Write the JSON objects ``records`` to ``path``, one line each with its own checksum,
    atomically (rewritten whole: never a torn line)."""
    with atomic_write(path) as fh:
        for record in records:
            fh.write(json_line(record, default))


def read_jsonl(path) -> list[dict]:
    """The records of a file written by :func:`write_jsonl`, each line's checksum checked
    (and removed). Lines without one load with one warning for the file.

    Raises:
        ChecksumError: a line differs from what was written (names the file and line).
        ValueError: a line is not JSON (names the file and line).
    """
    path = Path(path)
    records, unchecked = [], 0
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from None
            value, checked = _unsealed(value, f"{path}:{number}")
            unchecked += not checked
            records.append(value)
    if unchecked:
        warnings.warn(f"{path}: {unchecked} line(s) without a checksum; read without verifying them", stacklevel=2)
    return records


LOCK_NAME = ".seqrec.lock"


class RunFolderBusy(ValueError):
    """Another process is training into the same run folder."""


def lock_run_folder(path):
    """Take an exclusive lock on run folder ``path`` (created if missing) for as long as the
    returned handle stays open: in practice, the life of the ``seqrec train`` / ``pretrain``
    process, since the OS drops the lock when the process ends, however it ends.

    Two processes writing one folder would interleave checkpoints and histories; the second
    gets :class:`RunFolderBusy` instead. Advisory (``flock``): where the platform has none
    (Windows) the folder is not guarded.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run folder {path}: exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_NAME, "a")
    try:
        import fcntl
    except ImportError:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderBusy(f"run folder {path} is in use by another seqrec process (it holds "
                            f"{path / LOCK_NAME}); wait for it to end or choose another --out") from None
    return handle


def run_folder_in_use(path) -> bool:
    """Whether a live process holds :func:`lock_run_folder` on ``path`` (checked, not kept;
    nothing is created when the folder has never been locked)."""
    if not (Path(path) / LOCK_NAME).exists():
        return False
    try:
        lock_run_folder(path).close()
    except RunFolderBusy:
        return True
    return False


# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory(max_block_bytes: int = 1 << 30) -> bool:
    """Let glibc's ``malloc`` keep freed blocks of up to ``max_block_bytes`` for reuse
    instead of handing them back to the kernel; for the whole process, from now on.

    Why: a CPU training step allocates and frees [N, V] matrices (Beauty, full softmax:
    ~100 MB each). Past its mmap threshold (at most 32 MiB by default) glibc maps every
    such block fresh and unmaps it on free, so each step page-faults its matrices in
    again and the kernel zero-fills them. ``benchmarks/bench_malloc.py``, SASRec CE on
    Beauty-sized batches, one thread: 468 -> 376 CPU ms per step (1.24x; 69k -> 7k page
    faults), while the peak RSS grows from 695 to 1016 MiB: freed blocks are kept (and
    glibc's free lists hold a few before they are reused), so the process stays near
    its peak instead of shrinking between steps. Blocks over ``max_block_bytes`` are
    still mapped and returned as before.

    ``seqrec train`` / ``evaluate`` / ``pretrain`` call this at start (unless the
    environment sets ``SEQREC_REUSE_FREED_MEMORY=0``); from Python, call it yourself.

    Returns:
        True when applied; False where glibc refuses a setting, or where the C library
        is not glibc (macOS, Windows, musl: there nothing is changed).
    """
    if max_block_bytes < 0:
        raise ValueError(f"reuse_freed_memory: max_block_bytes must be >= 0, got {max_block_bytes}")
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl has mallopt but ignores these
        mallopt = libc.mallopt
    except (AttributeError, OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    int_max = 2**31 - 1  # mallopt takes an int
    threshold = min(max_block_bytes, int_max)
    # Blocks up to the threshold come from the heap; the heap is trimmed only when it has
    # twice that much free at its top, so kept blocks are not given back between steps.
    mapped = mallopt(_M_MMAP_THRESHOLD, threshold)
    return bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, min(2 * threshold, int_max)))


def release_freed_memory() -> bool:
    """Hand the free memory that glibc's ``malloc`` keeps back to the kernel now
    (``malloc_trim(0)``: the free pages inside the heap too, not only its top).

    Why: with :func:`reuse_freed_memory` the heap is never trimmed between steps, and the
    free space kept inside it grew with the epochs (SASRec CE on ml-100k: 632 MiB RSS after
    epoch 1, 1,374 after 25; with this call after every epoch it stayed within 660-770).
    The trainers call this once per epoch, so the process comes back to what it uses at
    every epoch's end: a bounded RSS for the cost of faulting one step's blocks in again.

    Returns:
        True when glibc released memory; False when there was none to release or the C
        library is not glibc.
    """
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only
        trim = libc.malloc_trim
    except (AttributeError, OSError, TypeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
