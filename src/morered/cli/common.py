"""What every command shares: exit codes, model flags, option validators, pre-flight checks of
outputs and devices, reading inputs, Ctrl-C handling and the error convention.

Conventions for a command module (``cli/<command>.py``):

- argparse types from here for numeric options (:func:`positive_int`, :func:`nonneg_int`,
  :func:`int_at_least`, :func:`positive_float`): a bad value is ``error: argument --x: ...``
  and exit 2, before anything runs;
- before any work: :func:`check_device`, :func:`check_output_file` / :func:`check_output_dir`,
  model loading (``load_model`` raises ``ModelError``);
- raise :mod:`morered.errors` exceptions; ``cli/main.py`` prints ``error: <message>`` and exits
  with the exception's code (2), KeyboardInterrupt -> 130, anything else -> ``error: internal
  error ...`` and 2; ``--debug`` shows the traceback;
- write every file with :func:`morered.io.atomic_write` (temporary file, then rename);
- long loops: :class:`Interruptible` (first Ctrl-C / SIGTERM asks to stop after the work in
  flight, the second stops at once) and :func:`morered.io.progress_bar` (throttled when stderr
  is not a terminal).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from morered.interrupt import Interruptible  # noqa: F401 (re-exported: commands import it from here)
from morered.errors import (EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED,  # noqa: F401 (re-exported)
                            InputError, OptionError, OutputError)

EXIT_CODES_HELP = ("Exit codes: 0 = done; 1 = some structures rejected or failed (reasons in the errors "
                   "file / on stderr); 2 = nothing done (unreadable input, bad option, model or output "
                   "path); 130 = interrupted (what was finished is kept).")


# ------------------------------------------------------------------------------ option types
def int_at_least(lo: int):
    """argparse type: an int >= ``lo``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, not {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return v


def add_model_flags(p):
    p.add_argument("--model", help="model file (.pt/.ckpt) or shipped name (jt, ddpm); default: the "
                   "shipped model of the variant")
    p.add_argument("--time-model", help="separate time predictor paired with a noise-only --model (AS/ITP)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--max-atoms", type=int_at_least(2), help="largest structure accepted (default: twice the "
                   "largest training molecule, 58 atoms for the shipped QM9 models)")


# ------------------------------------------------------------------------------ pre-flight checks
def check_device(device: str) -> str:
    """``device`` if torch can use it here, else OptionError naming the option and why."""
    from morered.sampling.api import check_device as _check

    return _check(device)


def check_output_file(path, option: str = "-o", inputs=()) -> Path:
    """Refuse an output path that cannot be written, before any work: a directory, a missing or
    read-only folder, or one of the ``inputs`` (never overwrite the input)."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise OutputError(f"{option} {path}: not a file name")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write to folder {folder} (permission denied)")
    if path.exists() and not path.is_file():
        raise OutputError(f"{option} {path} exists and is not a regular file")
    _probe(folder, option, path)
    for inp in inputs:
        if inp is not None and _same_file(path, Path(inp)):
            raise OutputError(f"{option} {path} is the input file {inp}; refusing to overwrite it "
                              "(choose another output)")
    return path


def check_output_dir(path, option: str) -> Path:
    """Refuse a folder path that is a file or cannot be created/written, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write to {existing} (permission denied)")
    return path


def _probe(folder: Path, option: str, path: Path) -> None:
    """Create and remove a temporary file in ``folder``: the only sure test that the output's
    temporary file can be written there (permissions, read-only mounts, /proc, a full quota)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot write to folder {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(name)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


# ------------------------------------------------------------------------------ inputs
def read_inputs(path):
    """Records of ``path``; InputError (exit 2) naming the file when it cannot be read at all."""
    from morered.io import read_structures

    return read_structures(path)


def read_or_exit(path):
    """Records of ``path``, or None after printing why the file cannot be read."""
    from morered.io import StructureReadError

    try:
        return read_inputs(path)
    except StructureReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def int_or_str(v):
    if v is None:
        return None
    return int(v) if str(v).isdigit() else v


# ------------------------------------------------------------------------------ interruptions
