"""Writes that never leave a half-written file: a temporary sibling, fsync, then a rename.

Every checkpoint, artifact, JSON summary and stage record workbench writes goes through
:func:`atomic_write_bytes` (or :func:`workbench.models.artifacts.save_artifact`, which builds a
whole folder the same way with :func:`dir_mode` and :func:`_fsync_dir`), so a crash or a full disk
leaves the previous file, never a mixture; a failed write is one :class:`WriteError` line.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from workbench.core.errors import WorkbenchError, WriteError

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_torch_save", "torch_bytes", "file_mode",
           "dir_mode", "sha256_bytes", "sha256_file"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting and restoring
    it would, for an instant, give files made by other threads no umask at all)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode for a new output file: 0666 less the umask (mkstemp alone would give 0600)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Mode for a new output folder: 0777 less the umask (mkdtemp alone would give 0700)."""
    return 0o777 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; the old file survives errors.

    The file gets the mode an ordinary ``open`` would give (the umask applies). An OSError (a
    full disk, a read-only folder, a path whose parent is a file) becomes a one-line
    :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f"{path}: is a folder; expected a file path to write")
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(path, exc) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def torch_bytes(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through :func:`atomic_write_bytes` (serialised in memory first)."""
    atomic_write_bytes(path, torch_bytes(obj))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def atomic_save_figure(fig: Any, path: str | os.PathLike, *, close: bool = True, **savefig: Any) -> None:
    """A matplotlib figure as PNG through :func:`atomic_write_bytes` (rendered in memory first: a
    full disk is one line and keeps the old file); ``savefig`` options pass through."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
