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
