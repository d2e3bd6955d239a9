"""Exclusive locks that say who holds them: one process per run folder (or any other resource).

:func:`exclusive_lock` takes an ``flock`` on a lock file without waiting and writes the holder's
pid and host into it. The kernel releases the lock when the holder exits, even after kill -9, so a
stale lock file never blocks anyone; the file itself is left in place (deleting it would let two
processes lock two different files of the same name).
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

from workbench.core.errors import WorkbenchError


class LockedError(WorkbenchError):
    """The resource is locked by another process (``holder``: what its lock file says)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def read_holder(path: str | os.PathLike) -> str:
    """What a lock file says about its holder ('pid 1234 on host'), or '' when unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()[:200]
    except OSError:
        return ""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, what: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Raises :class:`LockedError` at once -- naming ``what`` and the holder's pid -- when another
    process holds it. Not reentrant: a second lock in the same process on the same file is refused.
    """
    import fcntl

    path = Path(path)
    what = what or str(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WorkbenchError(f"{path}: cannot create the lock file for {what} ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path) or "another process"
            raise LockedError(f"{what} is in use by {holder} (lock {path}); wait for it to finish "
                              "or stop it, or use another folder", holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
