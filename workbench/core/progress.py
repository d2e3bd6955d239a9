"""Progress bars that suit where they are written.

On a terminal this is tqdm as usual. When the stream is not a terminal (a log file, a pipe, a
CI job) tqdm would still write carriage-return redraws and cursor escapes, which turn a log into
one enormous line; here the bar instead prints a plain line every ``WORKBENCH_PROGRESS_INTERVAL``
seconds (default 30) and a last line when it ends, and never writes ``\\r`` or escapes.

Use ``from workbench.core.progress import tqdm`` in place of ``from tqdm import tqdm``.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm as _tqdm

__all__ = ["tqdm", "is_terminal"]


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("WORKBENCH_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm.tqdm
    """tqdm on a terminal; periodic plain lines (no ``\\r``, no escapes) anywhere else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self._plain = not is_terminal(stream)
        if self._plain:
            kwargs["ascii"] = True
            kwargs.pop("dynamic_ncols", None)
            kwargs.setdefault("ncols", 100)
            self._plain_every = _interval()
            self._plain_last = time.monotonic()
            self._plain_printed = False
            self._plain_text = ""
        super().__init__(*args, **kwargs)

    def _plain_line(self) -> None:
        line = self.__str__().replace("\r", "").strip()
        if line and line != self._plain_text:
            self.fp.write(line + "\n")
            self.fp.flush()
            self._plain_printed = True
            self._plain_text = line
        self._plain_last = time.monotonic()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self._plain:
            return super().display(msg=msg, pos=pos)
        if msg == "":   # a request to clear the line: nothing to clear in a log
            return True
        if time.monotonic() - self._plain_last >= self._plain_every:
            self._plain_line()
        return True

    def clear(self, *args: Any, **kwargs: Any) -> None:
        if not self._plain:
            super().clear(*args, **kwargs)

    def close(self) -> None:
        if getattr(self, "_plain", False) and not getattr(self, "disable", True):
            if self.leave or self._plain_printed:
                self._plain_line()
            self.sp = None   # tqdm's own close then writes nothing (no clearing '\r')
        super().close()
