"""Soft-mode noise: normal-mode-shaped displacements of training molecules, for diffusion training.

A time head trained only on isotropic Gaussian noise reads a structure's distortion mostly from
its bond lengths: a displacement along soft normal modes (torsions, bends), which moves atoms far
while barely stretching bonds, looks almost at equilibrium to it, so relaxation starts too late
and stops too early (normal-mode inputs at 1500 K).  This module makes, for each of a set of
training molecules, ``k`` Boltzmann draws along its **MMFF94** normal modes (Hessian at the
reference geometry by central differences, a few ms per molecule; imaginary and very soft modes
floored at 50 cm⁻¹).  Training (``diffusion.soft_modes``) replaces the Gaussian noise ``eps`` of
a share of the molecules by a random unit-norm combination of their draws, rescaled to the same
mean square per coordinate as ``eps`` (so ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps_soft``
keeps the meaning of ``t`` as a noise *size*, and the time target is unchanged).  A combination
``sum_j c_j d_j`` with ``sum_j c_j² = 1`` of independent Gaussian draws is itself an exact draw of
the same distribution, so ``k`` stored draws give unlimited variety.

MMFF94 (not GFN2-xTB, whose Hessians make the benchmark's ``normal_mode`` inputs) keeps the
training distortion a cheap, different model of soft modes.  A molecule MMFF94 cannot type gets
no draws and always Gaussian noise (counted in :attr:`SoftModes.errors`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from morered.data.molecules import Molecules

log = logging.getLogger(__name__)

#: bump when the draws change meaning (part of the cache key)
VERSION = 1


class SoftModes:
    """Per-molecule normal-mode draws, looked up by molecule id.

    Attributes:
        ids: ``[m]`` sorted molecule ids that have draws.
        offsets: ``[m + 1]`` atom offsets into ``draws``.
        draws: ``[n_atoms_total, k, 3]`` float16 displacements (Å at the build temperature; half
            precision is plenty for a noise shape and halves the cache, 18 MB for 20,000 molecules).
        errors: ``{id: reason}`` of the molecules without draws.
    """

    def __init__(self, ids, offsets, draws, errors=None, settings=None):
        order = np.argsort(ids, kind="stable")
        if not np.all(order == np.arange(len(ids))):
            raise ValueError("SoftModes ids must be sorted")
        self.ids = np.asarray(ids, np.int64)
        self.offsets = np.asarray(offsets, np.int64)
        self.draws = np.asarray(draws, np.float16)
        self.errors = dict(errors or {})
        self.settings = dict(settings or {})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return int(self.draws.shape[1]) if len(self.draws) else 0

    def save(self, path) -> None:
        tmp = Path(f"{path}.tmp.npz")
        np.savez(tmp, ids=self.ids, offsets=self.offsets, draws=self.draws,
                 errors=json.dumps({str(k): v for k, v in self.errors.items()}), settings=json.dumps(self.settings))
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> "SoftModes":
        with np.load(path) as f:
            errors = {int(k): v for k, v in json.loads(str(f["errors"])).items()}
            return cls(f["ids"], f["offsets"], f["draws"], errors, json.loads(str(f["settings"])))

    def noise(self, mol_ids: torch.Tensor, n_atoms: torch.Tensor, select: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft-mode noise for the molecules of a batch.

        Args:
            mol_ids: ``[n_mol]`` ids of the batch's molecules; n_atoms: ``[n_mol]``.
            select: ``[n_mol]`` bool, the molecules that should get soft-mode noise.
        Returns:
            ``(eps [n_atoms, 3] float32, used [n_mol] bool)``: for the ``used`` molecules (selected
            and with draws) a random unit combination of their draws, centred and scaled to mean
            square 1 per coordinate; zeros elsewhere.
        """
        ids = mol_ids.cpu().numpy()
        pos = np.searchsorted(self.ids, ids)
        has = ((pos < len(self.ids)) & (self.ids[np.minimum(pos, len(self.ids) - 1)] == ids)
               if len(self.ids) else np.zeros(len(ids), bool))
        used = select.cpu().numpy() & has
        counts = n_atoms.cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        eps = torch.zeros(int(counts.sum()), 3)
        for m in np.flatnonzero(used):
            a, b = self.offsets[pos[m]], self.offsets[pos[m] + 1]
            if b - a != counts[m]:
                raise ValueError(f"molecule {ids[m]}: {counts[m]} atoms in the batch, {b - a} in the soft-mode draws")
            c = torch.randn(self.k, generator=generator, dtype=torch.float64)
            d = torch.einsum("k,akx->ax", c / c.norm(), torch.as_tensor(self.draws[a:b], dtype=torch.float64))
            d = d - d.mean(0)
            d = d / d.pow(2).mean().sqrt().clamp_min(1e-12)
            eps[starts[m]: starts[m] + counts[m]] = d.float()
        return eps, torch.as_tensor(used)


def molecule_draws(numbers, positions, k: int, seed: int, mol_id: int, temperature: float = 300.0,
                   min_wavenumber: float = 50.0) -> np.ndarray:
    """``[n, k, 3]`` Boltzmann draws along the MMFF94 normal modes at the reference (Å)."""
    from morered.data.displacements import boltzmann_displacement, mmff_hessian, normal_modes, rng_seed

    w, modes = normal_modes(numbers, positions, mmff_hessian(numbers, positions))
    rng = np.random.default_rng(rng_seed(seed, "soft_modes", mol_id))
    q = rng.standard_normal((k, len(w)))
    return np.transpose(boltzmann_displacement(numbers, w, modes, q, temperature, min_wavenumber), (1, 0, 2))


def build_soft_modes(mols: Molecules, k: int = 8, seed: int = 0, progress: bool = True) -> SoftModes:
    """Draws for every molecule of ``mols`` (failures recorded, never dropped silently)."""
    from tqdm.auto import tqdm

    ids, counts, draws, errors = [], [], [], {}
    order = np.argsort(mols.ids, kind="stable")
    for j in tqdm(order, desc="MMFF94 soft modes", unit="mol", disable=not progress, mininterval=2.0):
        x, z = mols.molecule(int(j))
        mid = int(mols.ids[j])
        try:
            d = molecule_draws(z, x, k, seed, mid)
            if not np.isfinite(d).all():
                raise FloatingPointError("non-finite normal-mode draw")
        except Exception as e:  # MMFF94 typing fails for a few per cent of QM9: Gaussian noise only
            errors[mid] = f"{type(e).__name__}: {e}"
            continue
        ids.append(mid)
        counts.append(len(z))
        draws.append(d)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    table = SoftModes(np.asarray(ids, np.int64), offsets,
                      np.concatenate(draws) if draws else np.zeros((0, k, 3), np.float32), errors,
                      {"version": VERSION, "k": k, "seed": seed, "hessian": "MMFF94 (RDKit)", "n": len(mols)})
    if errors:
        log.warning("soft modes: %d of %d molecules without MMFF94 draws (Gaussian noise only), e.g. id %d: %s",
                    len(errors), len(mols), next(iter(errors)), next(iter(errors.values())))
    return table


def soft_modes_for(mols: Molecules, n: int, k: int = 8, seed: int = 0, cache_dir=None,
                   progress: bool = True) -> SoftModes:
    """Draws for ``n`` molecules of ``mols`` chosen with ``seed`` (all if ``n`` is 0 or larger),
    cached in ``cache_dir`` under a key of the chosen ids and the settings."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(mols))[:n]) if 0 < n < len(mols) else np.arange(len(mols))
    sub = mols.subset(pick)
    key = hashlib.sha1(np.sort(sub.ids).astype(np.int64).tobytes()
                       + json.dumps([VERSION, k, seed]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"soft_modes-{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        return SoftModes.load(path)
    table = build_soft_modes(sub, k, seed, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.save(path)
        log.info("soft modes cached in %s", path)
    return table
