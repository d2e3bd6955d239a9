"""One module per `workbench` subcommand; see workbench/cli.py for the contract."""
