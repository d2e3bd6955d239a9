"""`workbench export` (being written)."""
from __future__ import annotations

import argparse

from workbench.errors import WorkbenchError

HELP = "(export: being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise WorkbenchError("'export' is not available yet")
