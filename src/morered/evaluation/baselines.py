"""Physics-based relaxation baselines with one signature (SPEC §7).

Every baseline is ``relax_<method>(numbers, positions, ref_positions, max_steps, **opts) ->
BaselineResult``.  ``ref_positions`` is only used where a method needs the molecule's bonds (MMFF94
perceives them from the reference geometry, as a user would from a known structure); the
positions it returns never depend on the reference otherwise.  A method that raises on a
structure returns a result with ``positions=None`` and ``error`` set: the caller counts it as a
failure, never drops it.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

# the minimisers live at the data floor (displacements use them too); re-exported here
from morered.data.displacements import mmff_minimize, perceive_bonds, xtb_calculator, xtb_minimize  # noqa: F401


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
        x, steps, converged = mmff_minimize(numbers, positions, ref_positions, max_steps, charge)
        return BaselineResult(x, steps, converged, time.perf_counter() - t0)
    except Exception as e:  # a structure the method cannot handle is a failure, reported
        return _error(e, t0)


# ---------------------------------------------------------------------------- GFN2-xTB (tblite)


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
        x, steps, converged, energy = xtb_minimize(numbers, positions, max_steps, fmax, charge, **opts)
        return BaselineResult(x, steps, converged, time.perf_counter() - t0, None, energy, threads)
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
