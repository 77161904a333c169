"""Single-point energies for judging relaxed structures: DFT (PySCF), GFN2-xTB (tblite) and the
ANI-1x screen (torchani), and a disk cache of single points keyed by geometry.

QM9's references are B3LYP/6-31G(2df,p) minima computed with Gaussian, so :func:`dft_energy`
uses the same level (Gaussian's B3LYP, i.e. VWN1-RPA in the LDA part: PySCF ``b3lypg``) with
density fitting.  ΔE = E(structure) - E(reference) in kcal/mol; positive means the structure lies
above the reference minimum.

DFT costs about a minute per QM9 molecule, so :class:`EnergyCache` keeps every single point in an
append-only JSONL file keyed by :func:`geometry_key` (numbers, positions to 1e-6 Å, level of
theory), with the geometry itself, so a structure that moved by float noise only (another
version, thread count or machine: up to :data:`MATCH_TOL` Å per coordinate) finds its energy too:
reruns and resumed runs reuse them.  ANI-1x (ωB97X/6-31G(d) trained) costs milliseconds
per structure and serves as a screen while tuning (:func:`ani_energies`); the benchmark reports
how well it tracks the DFT ΔE where both exist.
"""

from __future__ import annotations

import os

import numpy as np

#: Hartree -> kcal/mol
HARTREE_TO_KCAL = 627.5094740631
#: eV -> kcal/mol
EV_TO_KCAL = 23.060547830619


def dft_energy(
    numbers,
    positions,
    basis: str = "6-31G(2df,p)",
    xc: str = "b3lypg",
    charge: int = 0,
    spin: int = 0,
    density_fit: bool = True,
    conv_tol: float = 1e-9,
    cart: bool = False,
) -> float:
    """Restricted Kohn-Sham DFT energy (Hartree) with PySCF.

    Absolute energies differ from QM9's (U0 - ZPVE) by a few mHa because Gaussian's default
    6-31G(2df,p) uses Cartesian d shells (6D) with pure f: with spherical shells (default here)
    CH4 is +0.5 mHa and H2O +4.9 mHa off, with ``cart=True`` (6D 10F) -1.9 and -0.3 mHa; an
    11-atom molecule was +8.9 / -9.0 mHa.  ΔE between structures of the same molecule at the
    same level cancels this.  About 1 s for H2O, ~1 min for an 11-atom QM9 molecule on 1 core.

    Args:
        numbers: ``[n]``; positions: ``[n, 3]`` Å.
        spin: 2S (number of unpaired electrons).
        cart: Cartesian basis shells.
    Raises:
        RuntimeError if the SCF does not converge.
    """
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, np.asarray(positions, np.float64))],
        basis=basis,
        unit="Angstrom",
        charge=charge,
        spin=spin,
        cart=cart,
        verbose=0,
    )
    mf = dft.RKS(mol) if spin == 0 else dft.UKS(mol)
    if density_fit:
        mf = mf.density_fit()
    mf.xc = xc
    mf.conv_tol = conv_tol
    e = mf.kernel()
    if not mf.converged:
        raise RuntimeError("PySCF SCF did not converge")
    return float(e)


def xtb_energy(numbers, positions, charge: int = 0) -> float:
    """GFN2-xTB single-point energy (eV) with tblite."""
    from ase import Atoms

    from morered.evaluation.baselines import xtb_calculator

    atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(positions, np.float64))
    atoms.calc = xtb_calculator(charge=charge)
    return float(atoms.get_potential_energy())


def dft_threads() -> int:
    """Threads PySCF uses."""
    from pyscf import lib

    return int(lib.num_threads())


# ---------------------------------------------------------------------------- single-point cache

#: the level of theory :func:`dft_energy` runs with its defaults; part of every DFT cache key, so a
#: change of level never reads energies computed at another
DFT_SETTINGS = {"program": "pyscf", "method": "RKS", "xc": "b3lypg", "basis": "6-31G(2df,p)", "cart": False,
                "density_fit": True, "conv_tol": 1e-9, "charge": 0, "spin": 0, "unit": "Hartree"}
#: positions are rounded to this many decimals (Å) before hashing
KEY_DECIMALS = 6
#: a cached geometry serves a query whose positions differ by at most this (Å, every coordinate):
#: float32 networks give positions that differ by ~1e-7 Å between versions, thread counts and
#: machines, enough to cross the key's 1e-6 rounding; 1e-5 Å changes a B3LYP energy by < 1e-3
#: kcal/mol even at 50 kcal/mol/Å of force
MATCH_TOL = 1e-5


def _sha256(obj: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def geometry_group(numbers, settings: dict) -> str:
    """SHA-256 of (atomic numbers, settings): the cache's index of candidates for a tolerance match."""
    return _sha256({"numbers": [int(v) for v in np.asarray(numbers).ravel()], "settings": settings})


def geometry_key(numbers, positions, settings: dict) -> str:
    """SHA-256 of (atomic numbers, positions rounded to 1e-6 Å, settings): the cache key of one
    single point.  The same geometry gives the same key in any process; moving any atom by more
    than the rounding, reordering atoms or changing a setting gives another.  Positions are taken
    as given (not centred or aligned): a translated copy is another key (and costs one more single
    point), never a wrong hit.
    """
    z = [int(v) for v in np.asarray(numbers).ravel()]
    x = np.round(np.asarray(positions, np.float64), KEY_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    if x.shape != (len(z), 3) or not np.isfinite(x).all():
        raise ValueError(f"positions must be finite [{len(z)}, 3], not {x.shape}")
    return _sha256({"numbers": z, "positions": [f"{v:.{KEY_DECIMALS}f}" for v in x.ravel()], "settings": settings})


def default_dft_cache_path():
    """``$MORERED_CACHE/dft_cache.jsonl``."""
    from morered.data.qm9 import cache_dir

    return cache_dir() / "dft_cache.jsonl"


class EnergyCache:
    """Single-point energies on disk: an append-only JSONL file, one line per geometry.

    Each line is ``{"key": geometry_key, "energy": float or null, "error": str or null, ...}``
    (extra fields such as the formula and the seconds it took are kept for people reading the
    file); lines written through :func:`cached_energies` also hold ``group``
    (:func:`geometry_group`) and ``positions`` (rounded to 1e-6 Å), so :meth:`find` can match a
    geometry that moved by float noise only (lines without them match by key only).  :meth:`put`
    appends and flushes one line at once, so an interrupted run keeps every energy it finished and
    a resumed run (or another process) reads them back; a last line cut off mid-write is ignored.  ``path=None``: in memory only.  A failed calculation (SCF not
    converged) is stored with ``energy: null`` and its error, so it is not retried.
    """

    def __init__(self, path=None):
        from pathlib import Path

        self.path = None if path is None else Path(path)
        self._data: dict[str, dict] = {}
        self._groups: dict[str, list[dict]] = {}  # group -> records with positions (tolerance match)
        #: what the last :func:`cached_energies` call did: ``{"reused": n, "computed": m}``
        self.last: dict[str, int] = {}
        if self.path is not None and self.path.exists():
            import json

            with open(self.path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:  # a line cut off by an interrupted write
                        continue
                    if isinstance(rec, dict) and "key" in rec:
                        self._add(rec)

    def _add(self, rec: dict) -> None:
        self._data[rec["key"]] = rec
        if rec.get("group") and rec.get("positions") is not None:
            self._groups.setdefault(rec["group"], []).append(rec)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> float | None:
        """The energy stored for ``key``: a float, NaN for a stored failure, None if absent."""
        rec = self._data.get(key)
        if rec is None:
            return None
        return float("nan") if rec.get("energy") is None else float(rec["energy"])

    def find(self, key: str, group: str | None = None, positions=None, tol: float = MATCH_TOL) -> float | None:
        """:meth:`get` by ``key``; failing that, the energy of the stored geometry of the same
        ``group`` closest to ``positions`` if every coordinate lies within ``tol`` Å (None if none)."""
        hit = self.get(key)
        if hit is not None or group is None or positions is None:
            return hit
        x = np.asarray(positions, np.float64).ravel()
        best, best_d = None, tol
        for rec in self._groups.get(group, ()):
            y = np.asarray(rec["positions"], np.float64).ravel()
            if y.shape == x.shape:
                d = float(np.abs(y - x).max())
                if d <= best_d:
                    best, best_d = rec, d
        if best is None:
            return None
        return float("nan") if best.get("energy") is None else float(best["energy"])

    def put(self, key: str, energy: float, error: str | None = None, **info) -> None:
        """Store one energy (NaN with ``error`` for a failure) and append it to the file now."""
        import json
        import math

        rec = {"key": key, "energy": None if energy is None or math.isnan(energy) else float(energy),
               "error": error, **info}
        self._add(rec)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(rec, separators=(",", ":")) + "\n"
            with open(self.path, "a") as f:  # one write of one line: appends from two processes do not mix
                f.write(line)
                f.flush()
                os.fsync(f.fileno())


def cached_energies(jobs, fn, cache: EnergyCache, settings: dict, progress: bool = False,
                    desc: str = "single points") -> dict[str, float]:
    """Energies of ``jobs`` (``[(numbers, positions, info dict)]``) through ``cache``.

    Geometries already in the cache (by key, or within :data:`MATCH_TOL` Å of a stored one:
    :meth:`EnergyCache.find`) cost nothing; the others are computed one by one with
    ``fn(numbers, positions)`` (duplicates once), each stored as soon as it is done, with a
    progress bar and ETA over those left to do.  An exception from ``fn`` (e.g. SCF not
    converged) is stored as NaN with its message.

    Returns:
        ``{key: energy}`` for every job (NaN for failures), keys from :func:`geometry_key`.
    """
    import time

    from morered.io import progress_bar

    out: dict[str, float] = {}
    todo = {}
    for z, x, info in jobs:
        key = geometry_key(z, x, settings)
        group = geometry_group(z, settings)
        hit = cache.find(key, group, x)
        if hit is not None:
            out[key] = hit
        elif key not in todo:
            todo[key] = (z, x, info, group)
    cache.last = {"reused": len(out), "computed": len(todo)}
    with progress_bar(len(todo), desc, unit="sp", disable=not progress or not todo) as bar:
        for key, (z, x, info, group) in todo.items():
            t0 = time.perf_counter()
            try:
                e, err = float(fn(z, x)), None
            except Exception as exc:  # a failed single point is a result (NaN), stored, not retried
                e, err = float("nan"), f"{type(exc).__name__}: {exc}"
            pos = [round(float(v), KEY_DECIMALS) + 0.0 for v in np.asarray(x, np.float64).ravel()]
            cache.put(key, e, err, seconds=round(time.perf_counter() - t0, 2), n_atoms=len(z), **info,
                      group=group, positions=pos)
            out[key] = e
            bar.update(1)
    return out


# ---------------------------------------------------------------------------- ANI screen

#: pretrained models usable as a cheap energy screen (torchani 2.0; elements H, C, N, O)
SCREENS = ("ani1x", "ani1ccx")


def screen_available(name: str) -> tuple[bool, str]:
    """Whether a screen's package is installed: ``(ok, why not)``."""
    from morered.evaluation.peers import peer_available

    if name not in SCREENS:
        return False, f"unknown screen {name!r}; choose from {', '.join(SCREENS)}"
    return peer_available(name)


def ani_input(numbers_list, positions_list):
    """torchani's padded input ``(species [B, n] with -1 padding, coordinates [B, n, 3] float64)``."""
    import torch

    width = max(len(z) for z in numbers_list)
    species = torch.full((len(numbers_list), width), -1, dtype=torch.long)
    coords = torch.zeros((len(numbers_list), width, 3), dtype=torch.float64)
    for i, (z, x) in enumerate(zip(numbers_list, positions_list)):
        species[i, :len(z)] = torch.as_tensor(np.asarray(z, np.int64))
        coords[i, :len(z)] = torch.as_tensor(np.asarray(x, np.float64))
    return species, coords


def ani_energies(numbers_list, positions_list, model: str = "ani1x", batch_size: int = 256) -> np.ndarray:
    """ANI single-point energies (Hartree) of many structures, batched (padding with species -1).

    Structures with elements outside H, C, N, O, or without positions (None), get NaN.  A few
    hundred QM9-sized structures take about a second on one thread.

    Args:
        numbers_list: ``[n_i]`` atomic numbers per structure.
        positions_list: ``[n_i, 3]`` Å per structure (or None).
        model: ``ani1x`` or ``ani1ccx``.
    Returns:
        ``[n]`` float64 energies in Hartree.
    """
    import torch

    from morered.evaluation.peers import ELEMENTS, ani_model

    net = ani_model(model)
    allowed = ELEMENTS[model]
    out = np.full(len(numbers_list), np.nan)
    ok = [k for k, (z, x) in enumerate(zip(numbers_list, positions_list))
          if x is not None and set(int(v) for v in z) <= allowed and np.isfinite(x).all()]
    for b in range(0, len(ok), batch_size):
        idx = ok[b:b + batch_size]
        species, coords = ani_input([numbers_list[k] for k in idx], [positions_list[k] for k in idx])
        with torch.no_grad():
            e = net((species, coords)).energies
        out[idx] = e.numpy()
    return out
