"""The `workbench` command line: a table of subcommands, each in workbench/commands/<name>.py.

A command module defines ``HELP`` (one line), ``DESCRIPTION`` (the --help text),
``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports stay inside ``run`` so that
``workbench --help`` is instant. A :class:`WorkbenchError` anywhere becomes one line on stderr
and exit status 2, with nothing half-written left behind by the command.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from workbench import __version__
from workbench.core.errors import WorkbenchError

# name -> module under workbench.commands, in the order --help lists them.
COMMANDS: dict[str, str] = {
    "run": "run",
    "validate": "validate",
    "eval": "eval",
    "profile": "profile",
    "prune": "prune",
    "sensitivity": "sensitivity",
    "search": "search",
    "export": "export",
    "data": "data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Compress, prune and search efficient super-resolution networks (the RLFN "
                    "family): train and fine-tune by recipe, evaluate with the paper's protocol, "
                    "profile on the device you ship to.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'workbench COMMAND --help' for each command's options.")
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"workbench.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    import warnings

    caught: list[warnings.WarningMessage] = []
    try:
        # Warnings (torch's, PIL's) are held back until the command ends: beside a one-line
        # error they only confuse, so they are dropped then and shown after a success.
        with warnings.catch_warnings(record=True) as caught:
            rc = int(args._run(args) or 0)
    except WorkbenchError as exc:
        print(f"workbench {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"workbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        import errno

        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a write outside the atomic helpers (a plot, a log): still one line, naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"workbench {args.command}: error: {where}could not write ({exc.strerror or exc}); "
              "free some space and rerun", file=sys.stderr)
        return 2
    seen = set()
    for w in caught:
        key = (str(w.message), w.category, w.filename, w.lineno)
        if key not in seen:
            seen.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
