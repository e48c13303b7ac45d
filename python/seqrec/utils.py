"""Small shared helpers."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
    """Write to a temporary file beside ``path`` and rename it over ``path`` on success,
    so a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
