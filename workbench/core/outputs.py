"""Checks on output paths, made before any work so that a wrong kind of path costs nothing.

A command that writes a file refuses an existing folder there (and a file where a parent folder
must be); one that writes a folder refuses an existing file. Both say which flag was wrong.
"""
from __future__ import annotations

import os
from pathlib import Path

from workbench.core.errors import WorkbenchError

__all__ = ["check_output_file", "check_output_dir"]


def _check_parents(path: Path, flag: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise WorkbenchError(f"{flag} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise WorkbenchError(f"{flag} {path}: cannot write into {parent} (permission denied)")
            return


def check_output_file(path: str | os.PathLike | None, flag: str) -> None:
    """Raise unless ``path`` can be written as a file (None: nothing to check)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f"{flag} {path}: is a folder; give a file name (e.g. {path}/out.json)")
    _check_parents(path, flag)


def check_output_dir(path: str | os.PathLike | None, flag: str) -> None:
    """Raise unless ``path`` is or can become a folder (None: nothing to check)."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WorkbenchError(f"{flag} {path}: is a file; this option takes a folder")
    _check_parents(path, flag)
