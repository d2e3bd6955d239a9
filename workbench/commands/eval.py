"""`workbench eval` (being written)."""
from __future__ import annotations

import argparse

from workbench.errors import WorkbenchError

HELP = "(eval: being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise WorkbenchError("'eval' is not available yet")
