"""A user's own equilibrium structures (any file ase.io reads, ASE db, SDF) as training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morered.data.molecules import Molecules


def load_structures(path: str | Path) -> Molecules:
    """Read every structure of ``path``; ids are the frame indices.  A structure that cannot be
    read or is invalid (NaN coordinates, < 2 atoms) raises, naming it: training data must be clean."""
    from morered.io import read_structures

    positions, numbers = [], []
    for rec in read_structures(path):
        if rec.error is not None:
            raise ValueError(f"{path}: structure {rec.index} ({rec.name}): {rec.error}")
        x = np.asarray(rec.atoms.positions, dtype=np.float64)
        if len(x) < 2 or not np.isfinite(x).all():
            raise ValueError(f"{path}: structure {rec.index} ({rec.name}): needs >= 2 atoms with finite coordinates")
        positions.append(x - x.mean(0))
        numbers.append(rec.atoms.numbers)
    if not positions:
        raise ValueError(f"{path}: no structures")
    return Molecules.from_lists(positions, numbers)


def split_structures(mols: Molecules, split_file, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Index arrays train / val / test: from a JSON file ``{"val": [...], "test": [...]}`` of frame
    indices (train = the rest), or a seeded random split with the given fractions."""
    n = len(mols)
    if split_file:
        s = json.loads(Path(split_file).read_text())
        val, test = np.asarray(s.get("val", []), int), np.asarray(s.get("test", []), int)
        bad = [int(i) for i in np.concatenate([val, test]) if not 0 <= i < n]
        if bad:
            raise ValueError(f"{split_file}: indices out of range 0..{n - 1}: {bad[:5]}")
    else:
        perm = np.random.default_rng(seed).permutation(n)
        n_val = max(1, int(round(val_fraction * n)))
        n_test = int(round(test_fraction * n))
        val, test = perm[:n_val], perm[n_val:n_val + n_test]
    train = np.setdiff1d(np.arange(n), np.concatenate([val, test]))
    return {"train": train, "val": np.sort(val), "test": np.sort(test)}
