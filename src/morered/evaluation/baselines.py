"""Physics-based relaxation baselines with one signature (SPEC §7).

Every baseline is ``relax_<method>(numbers, positions, ref_positions, max_steps, **opts) ->
BaselineResult``.  ``ref_positions`` is only used where a method needs the molecule's bonds (MMFF94
perceives them from the reference geometry, as a user would from a known structure); the
positions it returns never depend on the reference otherwise.  A method that raises on a
structure returns a result with ``positions=None`` and ``error`` set: the caller counts it as a
failure, never drops it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class BaselineResult:
    """Outcome of relaxing one structure.

    Attributes:
        positions: relaxed positions ``[n, 3]`` float64 (Å), or None when the method failed.
        steps: optimiser iterations taken.
        converged: the method's own convergence criterion was met within ``max_steps``.
        seconds: wall time of this relaxation (set-up included).
        error: ``"ExceptionType: message"`` when the method failed, else None.
        energy_xtb: GFN2-xTB energy of the result (eV) when the method computed it anyway.
        threads: threads the method could use (OpenMP for tblite, 1 for RDKit).
    """

    positions: np.ndarray | None
    steps: int = 0
    converged: bool = False
    seconds: float = 0.0
    error: str | None = None
    energy_xtb: float | None = None
    threads: int = 1


def _error(e: BaseException, t0: float, threads: int = 1) -> BaselineResult:
    return BaselineResult(None, 0, False, time.perf_counter() - t0, f"{type(e).__name__}: {e}", threads=threads)


def omp_threads() -> int:
    """OpenMP threads available to tblite (asks libgomp; falls back to ``OMP_NUM_THREADS``)."""
    try:
        return int(ctypes.CDLL("libgomp.so.1").omp_get_max_threads())
    except (OSError, AttributeError):
        env = os.environ.get("OMP_NUM_THREADS", "")
        return int(env) if env.isdigit() else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------- identity


def relax_identity(numbers, positions, ref_positions=None, max_steps: int = 0, **opts) -> BaselineResult:
    """Return the input unchanged (the "do nothing" baseline: ratio 1 by construction)."""
    t0 = time.perf_counter()
    x = np.array(positions, dtype=np.float64)
    return BaselineResult(x, 0, True, time.perf_counter() - t0)


# ---------------------------------------------------------------------------- MMFF94 (RDKit)


@contextlib.contextmanager
def _quiet_c_output():
    """Silence C-level stdout and stderr (RDKit's extended-Hückel code prints "suspicious
    distance" warnings there for every strained molecule).  Errors still raise exceptions."""
    for s in (sys.stdout, sys.stderr):
        s.flush()
    saved = []
    try:
        with open(os.devnull, "w") as null:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(null.fileno(), fd)
            yield
    finally:
        for fd, old in saved:
            os.dup2(old, fd)
            os.close(old)


def perceive_bonds(numbers, ref_positions, charge: int = 0):
    """An RDKit molecule with bonds and bond orders perceived from a (reference) geometry.

    Tries, in order: ``DetermineBonds`` (connect-the-dots connectivity, xyz2mol bond orders) with
    the given total charge; the same with extended-Hückel connectivity, which rescues strained
    cages whose short non-bonded distances look like bonds (about 6 % of QM9); connectivity only
    (all single bonds; MMFF typing then usually fails and the caller reports an error).

    Returns:
        ``(mol, how)`` with ``how`` in ``{"xyz2mol", "hueckel", "connectivity"}``.
    """
    from ase import Atoms
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    from morered.io import mol_from_atoms

    RDLogger.DisableLog("rdApp.*")
    atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(ref_positions, np.float64))
    for how, kw in (("xyz2mol", {}), ("hueckel", {"useHueckel": True})):
        mol = mol_from_atoms(atoms, bonds=False)
        try:
            with _quiet_c_output() if kw else contextlib.nullcontext():
                rdDetermineBonds.DetermineBonds(mol, charge=charge, **kw)
            return mol, how
        except Exception:  # RDKit raises ValueError/RuntimeError variants; try the next method
            continue
    mol = mol_from_atoms(atoms, bonds=False)
    rdDetermineBonds.DetermineConnectivity(mol)
    try:
        Chem.SanitizeMol(mol)
    except Exception:
        mol.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(mol)
    return mol, "connectivity"


def relax_mmff(numbers, positions, ref_positions, max_steps: int = 1000, charge: int = 0, **opts) -> BaselineResult:
    """MMFF94 minimisation with RDKit, bonds perceived from the reference geometry.

    The paper used Open Babel's MMFF94; RDKit's implementation of the same force field is used
    here.  Convergence is RDKit's (gradient 1e-4 kcal/mol/Å or energy change 1e-6); ``steps`` is
    the number of BFGS iterations (counted from the trajectory snapshots).

    Args:
        numbers: atomic numbers ``[n]``; positions: input ``[n, 3]`` Å; ref_positions: the
            reference ``[n, 3]`` Å, used only to perceive bonds.
        max_steps: maximum BFGS iterations.
        charge: total charge for bond-order perception.
    """
    t0 = time.perf_counter()
    try:
        from rdkit.Chem import rdForceFieldHelpers, rdtrajectory  # noqa: F401  (registers Snapshot)
        from rdkit.Geometry import Point3D

        mol, how = perceive_bonds(numbers, ref_positions, charge)
        props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)
        if props is None:
            raise ValueError(f"MMFF94 cannot type the molecule (bonds from {how})")
        conf = mol.GetConformer()
        for i, p in enumerate(np.asarray(positions, dtype=np.float64)):
            conf.SetAtomPosition(i, Point3D(*map(float, p)))
        ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props)
        if ff is None:
            raise ValueError("RDKit could not set up the MMFF94 force field")
        ff.Initialize()
        code, snapshots = ff.MinimizeTrajectory(1, maxIts=int(max_steps))
        x = np.asarray(ff.Positions(), dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(x).all():
            raise FloatingPointError("MMFF94 produced non-finite positions")
        return BaselineResult(x, len(snapshots), code == 0, time.perf_counter() - t0)
    except Exception as e:  # a structure the method cannot handle is a failure, reported
        return _error(e, t0)


# ---------------------------------------------------------------------------- GFN2-xTB (tblite)


def xtb_calculator(charge: int = 0, method: str = "GFN2-xTB", **kw):
    """tblite's ASE calculator, silent."""
    from tblite.ase import TBLite

    return TBLite(method=method, charge=charge, verbosity=0, **kw)


def relax_xtb(
    numbers, positions, ref_positions=None, max_steps: int = 1000, fmax: float = 0.005, charge: int = 0, **opts
) -> BaselineResult:
    """GFN2-xTB (tblite) minimisation with ASE's L-BFGS until max |F| < ``fmax`` (eV/Å).

    ``energy_xtb`` of the result is the final GFN2-xTB energy (eV).  Extra ``opts`` go to the
    tblite calculator (e.g. ``accuracy``).
    """
    t0 = time.perf_counter()
    threads = omp_threads()
    try:
        from ase import Atoms
        from ase.optimize import LBFGS

        atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(positions, np.float64))
        atoms.calc = xtb_calculator(charge=charge, **opts)
        opt = LBFGS(atoms, logfile=None)
        converged = bool(opt.run(fmax=fmax, steps=int(max_steps)))
        x = atoms.get_positions()
        if not np.isfinite(x).all():
            raise FloatingPointError("GFN2-xTB relaxation produced non-finite positions")
        energy = float(atoms.get_potential_energy())
        return BaselineResult(x, int(opt.nsteps), converged, time.perf_counter() - t0, None, energy, threads)
    except Exception as e:  # SCF failures etc.: a reported failure
        return _error(e, t0, threads)


# ---------------------------------------------------------------------------- registry

BASELINES: dict[str, Callable[..., BaselineResult]] = {
    "identity": relax_identity,
    "mmff": relax_mmff,
    "xtb": relax_xtb,
}


def available(method: str) -> tuple[bool, str]:
    """Whether the tool behind a baseline is importable: ``(ok, reason if not)``."""
    try:
        if method == "identity":
            return True, ""
        if method == "mmff":
            from rdkit.Chem import rdDetermineBonds, rdForceFieldHelpers  # noqa: F401

            return True, ""
        if method == "xtb":
            from tblite.ase import TBLite  # noqa: F401

            return True, ""
    except ImportError as e:
        return False, f"{method}: {e}"
    return False, f"unknown baseline {method!r}; choose from {sorted(BASELINES)}"
