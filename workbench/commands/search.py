"""`workbench search` (being written)."""
from __future__ import annotations

import argparse

from workbench.errors import WorkbenchError

HELP = "(search: being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise WorkbenchError("'search' is not available yet")
