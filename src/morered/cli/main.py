"""The `morered` command line: builds the parser and dispatches to one module per command."""

from __future__ import annotations

import argparse
import logging
import sys

from morered.cli import benchmark, label, relax, score, train
from morered.errors import EXIT_INTERRUPTED, MoreRedError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="morered", description="Molecular relaxation by reverse diffusion "
                                     "(MoreRed): train, relax, score, benchmark.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (train, relax, score, benchmark, label):
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except MoreRedError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
