"""The `morered` command line; ``morered.cli.main`` is the entry point."""

from morered.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
