"""`workbench sensitivity` (being written)."""
from __future__ import annotations

import argparse

from workbench.errors import WorkbenchError

HELP = "(sensitivity: being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise WorkbenchError("'sensitivity' is not available yet")
