"""Structure displacements: Gaussian, normal modes with Boltzmann amplitudes, MMFF94/GFN2-xTB minima,
RDKit ETKDG embeddings from the bond graph.

Three users need them, so they live at the data floor: the benchmark's non-equilibrium inputs
(:mod:`morered.evaluation.inputs`), the force-field labels (:mod:`morered.forcefield.labels`) and
training augmentation.  Every generator takes :class:`~morered.data.molecules.Structures` and
returns structures in the same order, with the same atomic numbers and ids.  Each structure's
random numbers come from ``(seed, kind, id)`` only, so a molecule gets the same displacement
whatever else is in the set.  A structure a generator fails on gets ``None`` positions and its
reason in ``errors`` (never dropped silently).

The physics (RDKit MMFF94, tblite GFN2-xTB) is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import zlib

import numpy as np

from morered.data.molecules import Structures

#: Boltzmann constant, eV/K
K_B = 8.617333262e-5
#: sqrt(eV / (Å² amu)) in cm⁻¹: converts sqrt of a mass-weighted Hessian eigenvalue to a wavenumber
EV_A2_AMU_TO_CM1 = np.sqrt(1.602176634e-19 / 1e-20 / 1.66053906660e-27) / (2 * np.pi * 2.99792458e10)


def centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0)


def rng_seed(seed: int, tag: str, mol_id) -> np.random.SeedSequence:
    """Per-structure seed from (seed, kind, id), independent of the other structures in the set."""
    key = int(mol_id) if isinstance(mol_id, (int, np.integer)) else zlib.crc32(str(mol_id).encode())
    return np.random.SeedSequence([int(seed), zlib.crc32(tag.encode()), key])


def apply_each(refs: Structures, kind: str, fn) -> Structures:
    """Apply ``fn(k, numbers, ref_positions) -> positions`` per structure, recording failures."""
    pos, err = [], []
    for k in range(len(refs)):
        if refs.positions[k] is None:
            pos.append(None)
            err.append(f"no reference: {refs.errors[k]}")
            continue
        try:
            pos.append(centre(np.asarray(fn(k, refs.numbers[k], refs.positions[k]), np.float64)))
            err.append(None)
        except Exception as e:  # report per structure, keep going
            pos.append(None)
            err.append(f"{type(e).__name__}: {e}")
    return Structures(refs.ids.copy(), [z.copy() for z in refs.numbers], pos, err, kind)


# ---------------------------------------------------------------------------- Gaussian


def gaussian(refs: Structures, scale: float, seed: int = 0) -> Structures:
    """Every coordinate displaced by independent N(0, ``scale``²) (Å), then re-centred."""

    def one(k, z, x):
        rng = np.random.default_rng(rng_seed(seed, f"gaussian_{scale:g}", refs.ids[k]))
        return x + scale * rng.standard_normal(x.shape)

    return apply_each(refs, f"gaussian_{scale:g}", one)


# ---------------------------------------------------------------------------- GFN2-xTB


def xtb_calculator(charge: int = 0, method: str = "GFN2-xTB", **kw):
    """tblite's ASE calculator, silent."""
    from tblite.ase import TBLite

    return TBLite(method=method, charge=charge, verbosity=0, **kw)


def finite_difference_hessian(gradient, positions, step: float = 0.005) -> np.ndarray:
    """Symmetrised Hessian ``[3n, 3n]`` by central differences of ``gradient(x [n, 3]) -> [3n]``
    (6n calls), in the gradient's energy unit per Å²."""
    x0 = np.asarray(positions, np.float64)
    h = np.zeros((x0.size, x0.size))
    for k in range(x0.size):
        g = []
        for s in (step, -step):
            x = x0.copy().ravel()
            x[k] += s
            g.append(np.asarray(gradient(x.reshape(x0.shape)), np.float64).ravel())
        h[:, k] = (g[0] - g[1]) / (2 * step)
    return 0.5 * (h + h.T)


def xtb_hessian(numbers, positions, step: float = 0.005, charge: int = 0) -> np.ndarray:
    """GFN2-xTB Hessian ``[3n, 3n]`` (eV/Å²) by central differences of tblite forces (6n calls)."""
    from ase import Atoms

    atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(positions, np.float64))
    atoms.calc = xtb_calculator(charge=charge)

    def gradient(x):
        atoms.positions = x
        return -atoms.get_forces()

    return finite_difference_hessian(gradient, positions, step)


def xtb_minimize(numbers, positions, max_steps: int = 1000, fmax: float = 0.005, charge: int = 0, **opts):
    """GFN2-xTB L-BFGS minimisation until max |F| < ``fmax`` eV/Å.

    Returns ``(positions, steps, converged, energy_eV)``; raises on SCF failures or non-finite output.
    """
    from ase import Atoms
    from ase.optimize import LBFGS

    atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(positions, np.float64))
    atoms.calc = xtb_calculator(charge=charge, **opts)
    opt = LBFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=int(max_steps)))
    x = atoms.get_positions()
    if not np.isfinite(x).all():
        raise FloatingPointError("GFN2-xTB relaxation produced non-finite positions")
    return x, int(opt.nsteps), converged, float(atoms.get_potential_energy())


# ---------------------------------------------------------------------------- normal modes


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


def boltzmann_displacement(numbers, eigenvalues, modes, q, temperature: float,
                           min_wavenumber: float = 50.0) -> np.ndarray:
    """Cartesian displacement ``[n, 3]`` (Å) for normal coordinates ``q`` (standard normal draws, one
    per mode; ``[m]`` or ``[k, m]`` for k draws at once): mode i gets amplitude
    ``q_i sqrt(k_B T) / max(|omega_i|, omega_min)`` in mass-weighted coordinates (classical
    harmonic Boltzmann sampling at ``temperature`` K, imaginary and very soft modes floored at
    ``min_wavenumber`` cm⁻¹).  Eigenvalues and modes as :func:`normal_modes` returns them."""
    from ase.data import atomic_masses

    floor = (min_wavenumber / EV_A2_AMU_TO_CM1) ** 2
    sm = np.sqrt(np.repeat(atomic_masses[np.asarray(numbers, int)], 3))
    amp = np.sqrt(K_B * float(temperature) / np.maximum(np.abs(eigenvalues), floor))
    dx = (np.asarray(q) * amp) @ modes.T / sm  # [..., 3n]
    return dx.reshape(*dx.shape[:-1], -1, 3)


def normal_mode_displacements(
    refs: Structures,
    temperatures=(300.0,),
    seed: int = 0,
    step: float = 0.005,
    min_wavenumber: float = 50.0,
    tag: str = "normal_mode",
    independent: bool = False,
) -> list[Structures]:
    """Displace each reference along its GFN2-xTB normal modes with Boltzmann amplitudes.

    Classical harmonic sampling (as QM7-X, there at the DFTB3+MBD level): each mass-weighted
    normal coordinate is drawn independently from N(0, k_B T / omega_i^2), so the harmonic
    energy of the displacement follows the Boltzmann distribution at T (K).  The Hessian is taken
    at the reference (a DFT minimum, not the GFN2-xTB one) once per molecule and shared by all
    ``temperatures``; imaginary or very soft modes use ``|omega|`` floored at ``min_wavenumber``
    (cm⁻¹) so that their amplitude stays finite.  At 300 K a QM9 molecule moves by about
    0.1–0.2 Å RMSD.  Cost: 6n GFN2-xTB force calls per molecule (about 1 s for 18 atoms).

    Args:
        independent: draw new normal coordinates for every temperature (labels want variety);
            by default a temperature scan scales the same draws (the benchmark's inputs).
    Returns:
        one :class:`Structures` per temperature, kind ``tag`` (``tag_<T>`` for several).
    """
    temps = [float(t) for t in temperatures]
    out = [([], []) for _ in temps]
    for k in range(len(refs)):
        z, x = refs.numbers[k], refs.positions[k]
        try:
            if x is None:
                raise LookupError(f"no reference: {refs.errors[k]}")
            w, modes = normal_modes(z, x, xtb_hessian(z, x, step))
            rng = np.random.default_rng(rng_seed(seed, "normal_mode", refs.ids[k]))
            q0 = rng.standard_normal(len(w))
            for (pos, err), T in zip(out, temps):
                q = (rng.standard_normal(len(w)) if independent and T != temps[0] else q0)
                pos.append(centre(x + boltzmann_displacement(z, w, modes, q, T, min_wavenumber)))
                err.append(None)
        except Exception as e:  # report per structure, keep going
            msg = str(e) if isinstance(e, LookupError) else f"{type(e).__name__}: {e}"
            for pos, err in out:
                pos.append(None)
                err.append(msg)
    kinds = [tag] if len(temps) == 1 else [f"{tag}_{t:g}" for t in temps]
    return [Structures(refs.ids.copy(), [z.copy() for z in refs.numbers], pos, err, kind)
            for (pos, err), kind in zip(out, kinds)]


def normal_mode(refs: Structures, temperature: float = 300.0, seed: int = 0, step: float = 0.005,
                min_wavenumber: float = 50.0) -> Structures:
    """:func:`normal_mode_displacements` at one temperature."""
    return normal_mode_displacements(refs, (temperature,), seed, step, min_wavenumber)[0]


# ---------------------------------------------------------------------------- MMFF94 (RDKit)


@contextlib.contextmanager
def quiet_c_output():
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
            with quiet_c_output() if kw else contextlib.nullcontext():
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


def mmff_force_field(numbers, positions, ref_positions, charge: int = 0):
    """``(force field, molecule)``: an initialised RDKit MMFF94 force field at ``positions``, bonds
    perceived from ``ref_positions``; raises where MMFF94 cannot type the molecule.  The force
    field points into the molecule: keep the molecule referenced while using it (RDKit segfaults
    otherwise)."""
    from rdkit.Chem import rdForceFieldHelpers
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
    return ff, mol


#: kcal/mol in eV
KCAL_MOL_EV = 0.0433641043


def mmff_hessian(numbers, positions, step: float = 0.005, charge: int = 0) -> np.ndarray:
    """MMFF94 Hessian ``[3n, 3n]`` (eV/Å²) at ``positions`` by central differences of RDKit's
    analytic gradient (6n calls, about 7 ms for a QM9 molecule); bonds perceived from ``positions``.

    Each displaced geometry gets a force field of its own: RDKit's ``ForceField.CalcGrad(pos)``
    keeps state between calls (a Hessian made by calling it 6n times on one force field came out
    asymmetric with eigenvalues of -200 eV/Å² at an MMFF94 minimum).
    """
    from rdkit.Chem import rdForceFieldHelpers
    from rdkit.Geometry import Point3D

    x0 = np.asarray(positions, np.float64)
    mol, how = perceive_bonds(numbers, x0, charge)
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)
    if props is None:
        raise ValueError(f"MMFF94 cannot type the molecule (bonds from {how})")
    conf = mol.GetConformer()

    def gradient(x):
        for a, p in enumerate(x):
            conf.SetAtomPosition(a, Point3D(*map(float, p)))
        ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props)
        if ff is None:
            raise ValueError("RDKit could not set up the MMFF94 force field")
        return np.asarray(ff.CalcGrad(), np.float64) * KCAL_MOL_EV

    return finite_difference_hessian(gradient, x0, step)


def mmff_minimize(numbers, positions, ref_positions, max_steps: int = 1000, charge: int = 0):
    """MMFF94 (RDKit) minimisation, bonds perceived from ``ref_positions``.

    Returns ``(positions, steps, converged)``; raises where MMFF94 cannot type the molecule.
    """
    from rdkit.Chem import rdtrajectory  # noqa: F401  (registers Snapshot)

    ff, mol = mmff_force_field(numbers, positions, ref_positions, charge)  # noqa: F841 (mol keeps ff valid)
    code, snapshots = ff.MinimizeTrajectory(1, maxIts=int(max_steps))
    x = np.asarray(ff.Positions(), dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(x).all():
        raise FloatingPointError("MMFF94 produced non-finite positions")
    return x, len(snapshots), code == 0


# ---------------------------------------------------------------------------- minima of other methods


def mmff_min(refs: Structures, max_steps: int = 10000) -> Structures:
    """The MMFF94 (RDKit) minimum reached from each reference, bonds from the reference."""
    return apply_each(refs, "mmff_min", lambda k, z, x: mmff_minimize(z, x, x, max_steps)[0])


def xtb_min(refs: Structures, max_steps: int = 1000, fmax: float = 0.005) -> Structures:
    """The GFN2-xTB minimum (L-BFGS, max |F| < ``fmax`` eV/Å) reached from each reference."""
    return apply_each(refs, "xtb_min", lambda k, z, x: xtb_minimize(z, x, max_steps, fmax)[0])


# ---------------------------------------------------------------------------- ETKDG embeddings (RDKit)


def etkdg_embed(numbers, ref_positions, seed: int, charge: int = 0) -> np.ndarray:
    """An RDKit ETKDGv3 embedding of the molecule, made from the reference's bond graph only.

    What a chemist starts from: bonds and bond orders perceived from the reference geometry
    (:func:`perceive_bonds`), stereocentres and double-bond configurations read from it too (so
    the embedding is the same stereoisomer, not only the same graph), then a fresh distance-geometry
    embedding with every atom, hydrogens included, in the reference's order.  No force-field
    clean-up afterwards.  The embedding may land in another conformer than the reference.

    Raises:
        ValueError if bond orders cannot be perceived (connectivity only) or RDKit cannot embed.
    """
    from rdkit import Chem
    from rdkit.Chem import rdDistGeom

    mol, how = perceive_bonds(numbers, ref_positions, charge)
    if how == "connectivity":
        raise ValueError("RDKit could not perceive bond orders from the reference (connectivity only)")
    Chem.AssignStereochemistryFrom3D(mol)
    mol.RemoveAllConformers()
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = int(seed) % (2**31 - 1)
    params.numThreads = 1
    cid = rdDistGeom.EmbedMolecule(mol, params)
    if cid < 0:  # strained cages: more attempts rescue some (random starting coordinates did not, on QM9)
        params.maxIterations = 2000
        cid = rdDistGeom.EmbedMolecule(mol, params)
    if cid < 0:
        raise ValueError(f"RDKit ETKDGv3 could not embed the molecule (bonds from {how}; ~10 % of QM9, "
                         "mostly strained cages)")
    x = np.asarray(mol.GetConformer(cid).GetPositions(), np.float64)
    if x.shape != (len(numbers), 3) or [a.GetAtomicNum() for a in mol.GetAtoms()] != [int(z) for z in numbers]:
        raise RuntimeError("RDKit changed the atoms while embedding")  # never expected: atom order is kept
    return x


def etkdg(refs: Structures, seed: int = 0) -> Structures:
    """ETKDGv3 embeddings (:func:`etkdg_embed`), seeded per molecule by ``(seed, "etkdg", id)``."""

    def one(k, z, x):
        s = int(rng_seed(seed, "etkdg", refs.ids[k]).generate_state(1)[0])
        return etkdg_embed(z, x, s)

    return apply_each(refs, "etkdg", one)
