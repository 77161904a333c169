"""Smoke test of the shipped model's quality: it must relax, not just run."""

import numpy as np

from morered.evaluation.inputs import Structures, diffused
from morered.evaluation.rmsd import kabsch_rmsd
from morered.sampling.api import relax


def test_shipped_jt_brings_diffused_test_molecules_closer(test_molecules):
    """8 QM9 test molecules diffused to t = 100 (~0.25 Å): at least 7 end closer to their DFT
    geometry (the first, a 3-heavy-atom molecule, is the hard one), the median by more than half
    (the shipped model reaches ~0.03 Å here; an untrained or broken model moves them away)."""
    refs = Structures.from_molecules(test_molecules, kind="reference")
    inp = diffused(refs, 100, seed=0)
    res = relax([inp.atoms(k) for k in range(8)], "jt")
    before = np.array([kabsch_rmsd(inp.positions[k], refs.positions[k]) for k in range(8)])
    after = np.array([kabsch_rmsd(r.positions, refs.positions[k]) for k, r in enumerate(res)])
    assert all(r.error is None for r in res)
    assert np.sum(after < before) >= 7, (before, after)
    assert np.median(after) < 0.5 * np.median(before) and np.median(after) < 0.1
