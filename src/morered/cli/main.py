"""The `morered` command line: builds the parser and dispatches to one module per command.

The error convention of every command: a :class:`~morered.errors.MoreRedError` is printed as
``error: <message>`` (one line) and exits with its code; KeyboardInterrupt exits 130; any other
exception is an internal error (``error: internal error: ...``, exit 2); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from morered.cli import benchmark, evaluate, generate, label, merge, relax, score, train
from morered.cli.common import EXIT_CODES_HELP
from morered.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, MoreRedError


class Parser(argparse.ArgumentParser):
    """argparse with the project's error line: ``error: <message>`` (and the usage), exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_FATAL, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="morered", description="Molecular relaxation by reverse diffusion "
                    "(MoreRed): train, relax, score, generate, evaluate, benchmark, merge, label.",
                    epilog=EXIT_CODES_HELP)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (train, relax, score, generate, evaluate, benchmark, merge, label):
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
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `morered score ... | head`: the reader left, nothing to report
        try:
            sys.stdout = open(__import__("os").devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except (OSError, MemoryError) as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FATAL
    except Exception as e:  # a bug or an unforeseen failure: one line, not a traceback
        if args.debug:
            raise
        print(f"error: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_FATAL


def _one_line(e: BaseException) -> str:
    from morered.io import one_line

    return one_line(str(e), limit=1000) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
