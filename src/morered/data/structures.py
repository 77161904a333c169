"""Splitting a user's own equilibrium structures into train / val / test (they are read and validated by
:func:`morered.training.train.load_own_structures`, which skips bad structures with a reason)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morered.data.molecules import Molecules


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
