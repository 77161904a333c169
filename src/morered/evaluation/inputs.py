"""Non-equilibrium inputs for the relaxation benchmark, and the user's own inputs.

Every generator takes the reference structures and returns inputs in the same order, with the
same atomic numbers in the same atom order and the same ids.  Each structure's random numbers
come from ``(seed, kind, id)`` only, so a molecule gets the same input whatever else is in the
set (the first 10 of a 100-molecule run equal a 10-molecule run with the same seed).  Where a
generator fails on a molecule (e.g. MMFF94 cannot type it) its position entry is None and
``errors`` says why; the benchmark reports such inputs as missing instead of relaxing them.

Kinds (SPEC §7, the paper's robustness and QM7-X-style tests):

- ``diffused_<t>``: forward diffusion of the reference to step t (polynomial schedule, T = 1000,
  centred noise); t = 50, 100, 150 give about 0.12, 0.25, 0.38 Å RMSD on QM9.
- ``normal_mode``: displacements along the GFN2-xTB normal modes of the reference with classical
  harmonic Boltzmann amplitudes (QM7-X protocol; QM7-X itself used DFTB3+MBD modes).
- ``mmff_min`` / ``xtb_min``: the MMFF94 / GFN2-xTB minimum reached from the reference.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: bump when a generator changes, so that stale cache files are not reused
CACHE_VERSION = 2
#: Boltzmann constant, eV/K
K_B = 8.617333262e-5
#: sqrt(eV / (Å² amu)) in cm⁻¹: converts sqrt of a mass-weighted Hessian eigenvalue to a wavenumber
_EV_A2_AMU_TO_CM1 = np.sqrt(1.602176634e-19 / 1e-20 / 1.66053906660e-27) / (2 * np.pi * 2.99792458e10)


@dataclass
class Structures:
    """A list of molecules in float64, one entry per structure.

    Attributes:
        ids: ``[n]`` identifiers (int64 for QM9 indices, str for user files).
        numbers: atomic numbers ``[n_i]`` per structure.
        positions: positions ``[n_i, 3]`` (Å) per structure; None where generation failed.
        errors: per structure, why its positions are missing (None when present).
        kind: what the structures are (``reference``, ``diffused_100``, ``user`` ...).
    """

    ids: np.ndarray
    numbers: list[np.ndarray]
    positions: list[np.ndarray | None]
    errors: list[str | None] = field(default_factory=list)
    kind: str = ""

    def __post_init__(self):
        if not self.errors:
            self.errors = [None] * len(self.ids)
        if not (len(self.ids) == len(self.numbers) == len(self.positions) == len(self.errors)):
            raise ValueError("ids, numbers, positions and errors must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_molecules(cls, mols, kind: str = "reference") -> "Structures":
        """From :class:`morered.data.molecules.Molecules` (float32) to float64 structures."""
        pos, num = [], []
        for k in range(len(mols)):
            x, z = mols.molecule(k)
            pos.append(np.asarray(x, np.float64))
            num.append(np.asarray(z, np.int64))
        return cls(np.asarray(mols.ids, np.int64), num, pos, kind=kind)

    def atoms(self, k: int):
        """Structure k as :class:`ase.Atoms` with ``info["id"]``."""
        from ase import Atoms

        if self.positions[k] is None:
            raise ValueError(f"structure {self.ids[k]} has no positions: {self.errors[k]}")
        return Atoms(numbers=self.numbers[k], positions=self.positions[k], info={"id": self.ids[k].item()})

    def save(self, path) -> None:
        ok = np.array([p is not None for p in self.positions])
        n = np.array([len(z) for z in self.numbers], np.int64)
        pos = [p if p is not None else np.full((len(z), 3), np.nan) for p, z in zip(self.positions, self.numbers)]
        np.savez(
            path,
            ids=self.ids,
            numbers=np.concatenate(self.numbers) if len(n) else np.zeros(0, np.int64),
            positions=np.concatenate(pos) if len(n) else np.zeros((0, 3)),
            offsets=np.concatenate([[0], np.cumsum(n)]),
            ok=ok,
            errors=np.array([e or "" for e in self.errors], dtype=str),
            kind=np.array(self.kind),
        )

    @classmethod
    def load(cls, path) -> "Structures":
        with np.load(path, allow_pickle=False) as f:
            off = f["offsets"]
            sl = [slice(a, b) for a, b in zip(off[:-1], off[1:])]
            num = [f["numbers"][s].astype(np.int64) for s in sl]
            pos = [f["positions"][s] if ok else None for s, ok in zip(sl, f["ok"])]
            err = [e or None for e in f["errors"].tolist()]
            return cls(f["ids"], num, pos, err, str(f["kind"]))


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0)


def _rng_seed(seed: int, tag: str, mol_id) -> np.random.SeedSequence:
    """Per-structure seed from (seed, kind, id), independent of the other structures in the set."""
    key = int(mol_id) if isinstance(mol_id, (int, np.integer)) else zlib.crc32(str(mol_id).encode())
    return np.random.SeedSequence([int(seed), zlib.crc32(tag.encode()), key])


def _each(refs: Structures, kind: str, fn) -> Structures:
    """Apply ``fn(k, numbers, ref_positions) -> positions`` per structure, recording failures."""
    pos, err = [], []
    for k in range(len(refs)):
        if refs.positions[k] is None:
            pos.append(None)
            err.append(f"no reference: {refs.errors[k]}")
            continue
        try:
            pos.append(_centre(np.asarray(fn(k, refs.numbers[k], refs.positions[k]), np.float64)))
            err.append(None)
        except Exception as e:  # report per structure, keep going
            pos.append(None)
            err.append(f"{type(e).__name__}: {e}")
    return Structures(refs.ids.copy(), [z.copy() for z in refs.numbers], pos, err, kind)


# ---------------------------------------------------------------------------- diffused


def diffused(refs: Structures, t: int, seed: int = 0, schedule=None) -> Structures:
    """Forward diffusion q(x_t | x_0) of each reference to step ``t`` with centred noise.

    Args:
        refs: reference structures (centred or not; they are centred first).
        t: diffusion step, 1..T.
        schedule: a :class:`morered.diffusion.schedule.NoiseSchedule`; default polynomial, T = 1000.
    """
    import torch

    from morered.diffusion.schedule import NoiseSchedule, diffuse

    schedule = schedule or NoiseSchedule("polynomial", 1000)

    def one(k, z, x):
        g = torch.Generator().manual_seed(int(_rng_seed(seed, f"diffused_{t}", refs.ids[k]).generate_state(1)[0]))
        x0 = torch.as_tensor(_centre(x), dtype=torch.float64)
        xt, _ = diffuse(x0, torch.tensor([int(t)]), torch.zeros(len(z), dtype=torch.long), schedule, g)
        return xt.numpy()

    return _each(refs, f"diffused_{t}", one)


# ---------------------------------------------------------------------------- normal modes


def xtb_hessian(numbers, positions, step: float = 0.005, charge: int = 0) -> np.ndarray:
    """GFN2-xTB Hessian ``[3n, 3n]`` (eV/Å²) by central differences of tblite forces (6n calls)."""
    from ase import Atoms

    from morered.evaluation.baselines import xtb_calculator

    x0 = np.asarray(positions, np.float64)
    atoms = Atoms(numbers=np.asarray(numbers, int), positions=x0)
    atoms.calc = xtb_calculator(charge=charge)
    n = len(x0)
    h = np.zeros((3 * n, 3 * n))
    for i in range(n):
        for c in range(3):
            f = []
            for s in (step, -step):
                x = x0.copy()
                x[i, c] += s
                atoms.positions = x
                f.append(atoms.get_forces().ravel())
            h[:, 3 * i + c] = -(f[0] - f[1]) / (2 * step)
    return 0.5 * (h + h.T)


def normal_modes(numbers, positions, hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vibrational modes with translations and rotations projected out (Eckart).

    Args:
        numbers: ``[n]``; positions: ``[n, 3]`` Å; hessian: ``[3n, 3n]`` eV/Å².
    Returns:
        ``(eigenvalues [m], modes [3n, m])`` of the mass-weighted Hessian, eigenvalues in
        eV/(Å² amu), modes orthonormal in mass-weighted coordinates; m = 3n - 6 (3n - 5 if linear).
    """
    from ase.data import atomic_masses

    x = np.asarray(positions, np.float64)
    m = atomic_masses[np.asarray(numbers, int)]
    sm = np.sqrt(np.repeat(m, 3))  # [3n]
    c = x - (m[:, None] * x).sum(0) / m.sum()
    tr = []
    for k in range(3):
        v = np.zeros_like(x)
        v[:, k] = 1.0
        tr.append(v.ravel() * sm)
        tr.append(np.cross(np.eye(3)[k], c).ravel() * sm)
    u, s, _ = np.linalg.svd(np.array(tr).T, full_matrices=True)
    rank = int((s > 1e-6 * s.max()).sum())  # 6, or 5 for a linear molecule
    basis = u[:, rank:]  # [3n, m], orthonormal complement of translations and rotations
    hmw = hessian / sm[:, None] / sm[None, :]
    w, v = np.linalg.eigh(basis.T @ hmw @ basis)
    return w, basis @ v


def normal_mode(
    refs: Structures,
    temperature: float = 300.0,
    seed: int = 0,
    step: float = 0.005,
    min_wavenumber: float = 50.0,
) -> Structures:
    """Displace each reference along its GFN2-xTB normal modes with Boltzmann amplitudes.

    Classical harmonic sampling (as QM7-X, there at the DFTB3+MBD level): each mass-weighted
    normal coordinate is drawn independently from N(0, k_B T / omega_i^2), so the harmonic
    energy of the displacement follows the Boltzmann distribution at ``temperature`` (K).  The
    Hessian is taken at the reference (a DFT minimum, not the GFN2-xTB one); imaginary or very
    soft modes use ``|omega|`` floored at ``min_wavenumber`` (cm⁻¹) so that their amplitude stays
    finite.  At 300 K a QM9 molecule moves by about 0.1–0.2 Å RMSD.  Cost: 6n GFN2-xTB force
    calls per molecule (about 1 s for 18 atoms on one core).
    """
    floor = (min_wavenumber / _EV_A2_AMU_TO_CM1) ** 2

    def one(k, z, x):
        from ase.data import atomic_masses

        w, modes = normal_modes(z, x, xtb_hessian(z, x, step))
        # the seed does not depend on the temperature: a temperature scan scales the same draws
        rng = np.random.default_rng(_rng_seed(seed, "normal_mode", refs.ids[k]))
        q = rng.standard_normal(len(w)) * np.sqrt(K_B * temperature / np.maximum(np.abs(w), floor))
        dx = (modes @ q) / np.sqrt(np.repeat(atomic_masses[np.asarray(z, int)], 3))
        return x + dx.reshape(-1, 3)

    return _each(refs, "normal_mode", one)


# ---------------------------------------------------------------------------- minima of other methods


def mmff_min(refs: Structures, max_steps: int = 10000) -> Structures:
    """The MMFF94 (RDKit) minimum reached from each reference, bonds from the reference."""
    from morered.evaluation.baselines import relax_mmff

    def one(k, z, x):
        r = relax_mmff(z, x, x, max_steps)
        if r.positions is None:
            raise RuntimeError(r.error)
        return r.positions

    return _each(refs, "mmff_min", one)


def xtb_min(refs: Structures, max_steps: int = 1000, fmax: float = 0.005) -> Structures:
    """The GFN2-xTB minimum (L-BFGS, max |F| < ``fmax`` eV/Å) reached from each reference."""
    from morered.evaluation.baselines import relax_xtb

    def one(k, z, x):
        r = relax_xtb(z, x, x, max_steps, fmax=fmax)
        if r.positions is None:
            raise RuntimeError(r.error)
        return r.positions

    return _each(refs, "xtb_min", one)


# ---------------------------------------------------------------------------- by name, cached

_DIFFUSED = re.compile(r"^diffused_(\d+)$")
KINDS = ("diffused_50", "diffused_100", "diffused_150", "normal_mode", "mmff_min", "xtb_min")


def input_settings(kind: str, seed: int = 0, temperature: float = 300.0) -> dict:
    """The settings that determine an input kind's structures (the cache key, less the ids)."""
    if m := _DIFFUSED.match(kind):
        return {"kind": "diffused", "t": int(m.group(1)), "seed": int(seed)}
    if kind == "normal_mode":
        return {"kind": kind, "temperature": float(temperature), "seed": int(seed)}
    if kind == "mmff_min":
        return {"kind": kind, "max_steps": 10000}
    if kind == "xtb_min":
        return {"kind": kind, "max_steps": 1000, "fmax": 0.005}
    raise ValueError(f"unknown input kind {kind!r}; choose diffused_<t> or one of {KINDS[3:]}")


def cache_path(settings: dict, ids) -> Path:
    """``$MORERED_CACHE/benchmark_inputs/<kind>-<settings>-<hash of ids>.npz``."""
    from morered.data.qm9 import cache_dir

    tag = "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in settings.items() if k != "kind")
    digest = hashlib.sha1(("\n".join(map(str, ids)) + f"\nv{CACHE_VERSION}").encode()).hexdigest()[:16]
    folder = cache_dir() / "benchmark_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{settings['kind']}-{tag}-n{len(ids)}-{digest}.npz"


def make_inputs(kind: str, refs: Structures, seed: int = 0, temperature: float = 300.0, cache: bool = True) -> Structures:
    """Inputs of one kind for ``refs``, read from or written to the disk cache.

    Args:
        kind: ``diffused_<t>``, ``normal_mode``, ``mmff_min`` or ``xtb_min``.
        seed: random seed (diffused, normal_mode).
        temperature: K, for ``normal_mode``.
        cache: use ``$MORERED_CACHE/benchmark_inputs`` (see :func:`cache_path`).
    """
    s = input_settings(kind, seed, temperature)
    path = cache_path(s, refs.ids) if cache else None
    if path is not None and path.exists():
        out = Structures.load(path)
        out.kind = kind
        return out
    if s["kind"] == "diffused":
        out = diffused(refs, s["t"], seed)
    elif kind == "normal_mode":
        out = normal_mode(refs, temperature, seed)
    elif kind == "mmff_min":
        out = mmff_min(refs, s["max_steps"])
    else:
        out = xtb_min(refs, s["max_steps"], s["fmax"])
    out.kind = kind
    if path is not None:
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
        out.save(tmp)
        os.replace(tmp, path)
    return out


def qm9_references(n: int, seed: int = 0) -> Structures:
    """``n`` QM9 test molecules chosen by ``seed`` (a prefix of one permutation of the test ids)."""
    from morered.data.qm9 import load_qm9, split_ids

    mols = load_qm9()
    test = split_ids(mols)["test"]
    if n > len(test):
        raise ValueError(f"n = {n} but the test split has {len(test)} molecules")
    ids = np.random.default_rng(seed).permutation(test)[:n]
    return Structures.from_molecules(mols.select_ids(ids), kind="reference")


# ---------------------------------------------------------------------------- user files


def read_structures(path, id_field: str = "id") -> Structures:
    """Read all structures of a file with :func:`morered.io.read_structures`; ids from a field.

    The id is ``atoms.info[id_field]`` (for SDF/MOL files: the property ``id_field``) if present,
    else, for SDF/MOL, the molecule name (title) if not empty, else the record index.  Ids are
    strings.  A record that cannot be used (e.g. an unparseable SDF record) raises ``ValueError``.
    """
    from morered.io import read_structures as read_records

    path = Path(path)
    ids, numbers, positions = [], [], []
    for rec in read_records(path):
        if rec.error is not None:
            raise ValueError(f"{path}: record {rec.index} ({rec.name}): {rec.error}")
        info = rec.atoms.info
        title = str(info.get("name", "")).strip() if rec.mol is not None else ""
        ids.append(str(info[id_field]) if id_field in info else (title or str(rec.index)))
        numbers.append(rec.atoms.get_atomic_numbers().astype(np.int64))
        positions.append(rec.atoms.get_positions().astype(np.float64))
    return Structures(np.array(ids, dtype=str), numbers, positions, kind=path.stem)


def read_user_inputs(inputs, refs, id_field: str = "id") -> tuple[Structures, Structures]:
    """A user's inputs and references, matched by id (``--inputs FILE --refs FILE``).

    Several inputs may share one reference (e.g. QM7-X's three per molecule).  Each input must
    have the same atomic numbers in the same order as its reference.

    Returns:
        ``(inputs, refs)`` of equal length, ``refs[k]`` being the reference of ``inputs[k]``;
        inputs whose id has no reference raise ``KeyError``.
    """
    x = read_structures(inputs, id_field)
    r = read_structures(refs, id_field)
    where: dict[str, int] = {}
    for k, i in enumerate(r.ids):
        if str(i) in where:
            raise ValueError(f"{refs}: id {i!r} appears more than once")
        where[str(i)] = k
    missing = [str(i) for i in x.ids if str(i) not in where]
    if missing:
        raise KeyError(f"{len(missing)} input ids have no reference in {refs}, e.g. {missing[:5]}")
    idx = [where[str(i)] for i in x.ids]
    bad = [str(x.ids[k]) for k, j in enumerate(idx) if not np.array_equal(x.numbers[k], r.numbers[j])]
    if bad:
        raise ValueError(f"{len(bad)} inputs differ from their reference in atoms or atom order, e.g. {bad[:5]}")
    x.kind = "user"
    ref = Structures(x.ids.copy(), [r.numbers[j] for j in idx], [r.positions[j] for j in idx], kind="reference")
    return x, ref


def qm7x_inputs(data_dir, n: int | None = None, seed: int = 0, split_file=None) -> tuple[dict, Structures]:
    """QM7-X's own displaced structures of test references, the paper's way (closest, middle and
    farthest by RMSD per reference): ``({"qm7x_closest": inputs, ...}, references)``."""
    from morered.data.qm7x import KINDS, relaxation_set

    s = relaxation_set(data_dir, split_file, seed, n)
    r = s["refs"]
    ids = np.asarray(r["keys"], dtype=str)
    refs = Structures(ids, r["numbers"], r["positions"], kind="reference")
    inputs = {}
    for kind in KINDS:
        errors = [None if x is not None else "no readable displaced structure" for x in s[kind]["positions"]]
        inputs[f"qm7x_{kind}"] = Structures(ids.copy(), [z.copy() for z in r["numbers"]], s[kind]["positions"],
                                            errors, f"qm7x_{kind}")
    return inputs, refs
