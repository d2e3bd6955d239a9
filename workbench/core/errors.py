"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""
from __future__ import annotations


class WorkbenchError(Exception):
    """A problem with the user's input (a file, a flag, a recipe), stated so it can be fixed.

    The message is shown as is, on one line, without a traceback.
    """

    exit_code = 2


class ArtifactError(WorkbenchError):
    """A checkpoint or artifact that cannot be read or does not describe a model we can build."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, without ever building the full repr
    (a huge value -- say, a YAML alias bomb -- would otherwise cost minutes and gigabytes)."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel = 3
    shortener.maxstring = shortener.maxother = limit
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 8
    shortener.maxlong = 40
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WriteError(WorkbenchError, OSError):
    """An output that could not be written (a full disk, a read-only folder), naming the path.

    Still an :class:`OSError` (with ``errno``), so code that handles write failures keeps working;
    the previous file at ``path``, if any, is left as it was.
    """

    def __init__(self, path: object, exc: OSError) -> None:
        OSError.__init__(self, exc.errno, exc.strerror)
        self.path = path
        import errno as _errno

        if exc.errno == _errno.ENOSPC:
            reason = "no space left on device"
        elif exc.errno == _errno.EDQUOT:
            reason = "disk quota exceeded"
        else:
            reason = exc.strerror or str(exc) or type(exc).__name__
        self.message = f"{path}: could not write ({reason}); any previous file there is unchanged"

    def __str__(self) -> str:
        return self.message
