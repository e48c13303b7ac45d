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
