"""What every command shares: exit codes, model flags, reading inputs, the error convention."""

from __future__ import annotations

import sys

from morered.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED  # noqa: F401 (re-exported)


def add_model_flags(p):
    p.add_argument("--model", help="model file (.pt/.ckpt) or shipped name (jt, ddpm); default: the "
                   "shipped model of the variant")
    p.add_argument("--time-model", help="separate time predictor paired with a noise-only --model (AS/ITP)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-atoms", type=int, help="largest structure accepted (default: twice the largest "
                   "training molecule, 58 atoms for the shipped QM9 models)")



def read_or_exit(path):
    """Records of ``path``, or None after printing why the file cannot be read."""
    from morered.io import StructureReadError, read_structures

    try:
        return read_structures(path)
    except StructureReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def int_or_str(v):
    if v is None:
        return None
    return int(v) if str(v).isdigit() else v
