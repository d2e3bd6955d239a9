"""`workbench prune` (being written)."""
from __future__ import annotations

import argparse

from workbench.errors import WorkbenchError

HELP = "(prune: being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise WorkbenchError("'prune' is not available yet")
