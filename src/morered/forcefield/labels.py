"""GFN2-xTB energies and forces for QM9 molecules and displaced copies: force-field training data.

QM9 has neither forces nor non-equilibrium structures, and QM7-X cannot be downloaded here, so
the force fields learn GFN2-xTB (tblite): their minima are GFN2-xTB's (about 0.05 Å from the
B3LYP references).  Per split (the fixed QM9 split shipped in the package; validation and test
labels come from validation and test molecules only) the first ``n`` molecules of a seeded
permutation are labelled at

- the reference geometry,
- Gaussian displacements at each of ``gaussian_scales`` (Å per coordinate),
- normal-mode displacements at each of ``temperatures`` (K; GFN2-xTB Hessian, Boltzmann
  amplitudes, new draws per temperature) for the first ``n_normal_mode`` of those molecules
  (a Hessian costs 6n force calls, about 1 s per molecule).

A structure GFN2-xTB fails on is logged (warning, with id, kind and reason), counted in the
file's ``failures`` and left out.  The result is cached as
``$MORERED_CACHE/labels/labels-<hash of the settings>.npz`` with the settings stored inside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from morered import properties as P
from morered.data.batch import collate
from morered.data.molecules import Structures

log = logging.getLogger("morered.label")

#: bump when labelling changes, so that stale cache files are not reused
LABEL_VERSION = 1
SPLITS = ("train", "val", "test")


def default_settings() -> dict:
    return {
        "n_train": 2000, "n_val": 200, "n_test": 200,
        "n_normal_mode": None,  # per split: normal modes for the first N molecules (None: all)
        "temperatures": [300.0, 1000.0],
        "gaussian_scales": [0.05, 0.15],
        "seed": 0,
        "method": "GFN2-xTB",
        "version": LABEL_VERSION,
    }


@dataclass
class Labels:
    """Labelled structures, flat (float64 positions, Å; energies eV; forces eV/Å).

    ``kind[k]`` says how structure k was made (``reference``, ``gaussian_0.05``,
    ``normal_mode_300`` ...); ``split[k]`` is ``train``, ``val`` or ``test``.
    """

    positions: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    mol_id: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    kind: np.ndarray
    split: np.ndarray
    settings: dict
    failures: list

    def __len__(self) -> int:
        return len(self.mol_id)

    def n_atoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    def slices(self, k: int) -> slice:
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))

    def subset(self, index) -> "Labels":
        index = np.asarray(index, np.int64)
        sl = [self.slices(k) for k in index]
        n = np.array([s.stop - s.start for s in sl], np.int64)
        cat = lambda a, shape: np.concatenate([a[s] for s in sl]) if len(sl) else np.zeros(shape, a.dtype)  # noqa: E731
        return Labels(cat(self.positions, (0, 3)), cat(self.numbers, (0,)), np.concatenate([[0], np.cumsum(n)]),
                      self.mol_id[index], self.energy[index], cat(self.forces, (0, 3)), self.kind[index],
                      self.split[index], self.settings, self.failures)

    def where(self, split: str | None = None, kinds=None, max_force: float | None = None) -> np.ndarray:
        """Indices of the structures of ``split`` and ``kinds`` (None: any) whose largest atomic
        force is at most ``max_force`` eV/Å (None: any)."""
        keep = np.ones(len(self), bool)
        if split is not None:
            keep &= self.split == split
        if kinds is not None:
            keep &= np.isin(self.kind, list(kinds))
        if max_force is not None:
            keep &= self.max_force() <= float(max_force)
        return np.flatnonzero(keep)

    def max_force(self) -> np.ndarray:
        """Largest atomic force of each structure, eV/Å ``[n_structures]``."""
        if len(self) == 0:
            return np.zeros(0)
        return np.maximum.reduceat(np.linalg.norm(self.forces, axis=1), self.offsets[:-1])

    def batch(self, index) -> dict[str, torch.Tensor]:
        """A batch with ``P.energy`` ``[n_mol]`` and ``P.forces`` ``[n_atoms, 3]`` (float32)."""
        index = [int(k) for k in index]
        sl = [self.slices(k) for k in index]
        b = collate([self.positions[s] for s in sl], [self.numbers[s] for s in sl], self.mol_id[index])
        b[P.energy] = torch.as_tensor(self.energy[index], dtype=torch.float32)
        b[P.forces] = torch.as_tensor(np.concatenate([self.forces[s] for s in sl]), dtype=torch.float32)
        return b

    def save(self, path) -> None:
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, positions=self.positions, numbers=self.numbers, offsets=self.offsets, mol_id=self.mol_id,
                 energy=self.energy, forces=self.forces, kind=self.kind.astype(str), split=self.split.astype(str),
                 settings=np.array(json.dumps(self.settings)), failures=np.array(json.dumps(self.failures)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "Labels":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["positions"], f["numbers"], f["offsets"], f["mol_id"], f["energy"], f["forces"],
                       f["kind"], f["split"], json.loads(str(f["settings"])), json.loads(str(f["failures"])))


class LabelDataset(torch.utils.data.Dataset):
    """Index-only dataset over :class:`Labels`; :meth:`collate` builds the batch."""

    def __init__(self, labels: Labels):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, k: int) -> int:
        return k

    def collate(self, index):
        return self.labels.batch(index)


# ---------------------------------------------------------------------------- labelling


def xtb_single_point(numbers, positions, calc=None) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (eV) and forces (eV/Å) of one structure; raises on SCF failure."""
    from ase import Atoms

    from morered.data.displacements import xtb_calculator

    atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(positions, np.float64))
    atoms.calc = calc or xtb_calculator()
    e = float(atoms.get_potential_energy())
    f = np.asarray(atoms.get_forces(), np.float64)
    if not (np.isfinite(e) and np.isfinite(f).all()):
        raise FloatingPointError("non-finite energy or forces")
    return e, f


def settings_hash(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(settings: dict) -> Path:
    from morered.data.qm9 import cache_dir

    folder = cache_dir() / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"labels-{settings_hash(settings)}.npz"


def split_molecules(split: str, n: int, seed: int) -> Structures:
    """The first ``n`` molecules of a seeded permutation of one QM9 split (float64)."""
    from morered.data.qm9 import load_qm9, split_ids

    mols = load_qm9()
    ids = split_ids(mols)[split]
    ids = np.random.default_rng([seed, SPLITS.index(split)]).permutation(ids)[: int(n)]
    return Structures.from_molecules(mols.select_ids(ids), kind="reference")


def displaced_sets(refs: Structures, settings: dict, progress: bool = False) -> list[Structures]:
    """The reference, its Gaussian displacements and (for the first ``n_normal_mode``) normal modes."""
    from morered.data.displacements import centre, gaussian, normal_mode_displacements

    ref = Structures(refs.ids, refs.numbers, [centre(x) for x in refs.positions], kind="reference")
    sets = [ref] + [gaussian(refs, float(s), settings["seed"]) for s in settings["gaussian_scales"]]
    n_nm = len(refs) if settings["n_normal_mode"] is None else min(int(settings["n_normal_mode"]), len(refs))
    if n_nm and settings["temperatures"]:
        sub = Structures(refs.ids[:n_nm], refs.numbers[:n_nm], refs.positions[:n_nm])
        t0 = time.time()
        nm = []
        chunk = 25  # Hessians in chunks, so that progress shows
        from tqdm import tqdm

        for a in tqdm(range(0, n_nm, chunk), desc="normal modes", unit=f"x{chunk} mol", disable=not progress):
            part = Structures(sub.ids[a:a + chunk], sub.numbers[a:a + chunk], sub.positions[a:a + chunk])
            nm.append(normal_mode_displacements(part, settings["temperatures"], settings["seed"], tag="normal_mode",
                                                independent=True))
        log.info("normal modes: %d molecules in %.0f s", n_nm, time.time() - t0)
        for t in range(len(settings["temperatures"])):
            parts = [c[t] for c in nm]
            sets.append(Structures(np.concatenate([p.ids for p in parts]), sum((p.numbers for p in parts), []),
                                   sum((p.positions for p in parts), []), sum((p.errors for p in parts), []),
                                   f"normal_mode_{float(settings['temperatures'][t]):g}"))
    return sets


def make_labels(settings: dict | None = None, cache: bool = True, progress: bool = True, path=None) -> tuple[Labels, Path | None]:
    """Label (or read from the cache) the structures described by ``settings`` (see
    :func:`default_settings`; missing keys take the defaults).  Returns ``(labels, cache file)``."""
    from tqdm import tqdm

    from morered.data.displacements import xtb_calculator

    s = {**default_settings(), **(settings or {})}
    s["temperatures"] = [float(t) for t in s["temperatures"]]
    s["gaussian_scales"] = [float(x) for x in s["gaussian_scales"]]
    path = Path(path) if path is not None else (cache_path(s) if cache else None)
    if path is not None and path.exists():
        log.info("labels read from %s", path)
        return Labels.load(path), path
    pos, num, mid, en, fo, kinds, splits, failures = [], [], [], [], [], [], [], []
    calc = xtb_calculator()
    t0 = time.time()
    n_calls = 0
    for split in SPLITS:
        n = int(s[f"n_{split}"])
        if n <= 0:
            continue
        refs = split_molecules(split, n, int(s["seed"]))
        sets = displaced_sets(refs, s, progress)
        total = sum(len(x) for x in sets)
        bar = tqdm(total=total, desc=f"GFN2-xTB {split}", unit="struct", disable=not progress)
        for st in sets:
            for k in range(len(st)):
                bar.update(1)
                mol = int(st.ids[k])
                if st.positions[k] is None:
                    failures.append({"mol_id": mol, "kind": st.kind, "split": split, "error": st.errors[k]})
                    log.warning("left out: molecule %d (%s, %s): %s", mol, split, st.kind, st.errors[k])
                    continue
                try:
                    n_calls += 1
                    e, f = xtb_single_point(st.numbers[k], st.positions[k], calc)
                except Exception as err:  # SCF failure: logged, counted, left out
                    msg = f"{type(err).__name__}: {err}"
                    failures.append({"mol_id": mol, "kind": st.kind, "split": split, "error": msg})
                    log.warning("left out: molecule %d (%s, %s): GFN2-xTB failed: %s", mol, split, st.kind, msg)
                    calc = xtb_calculator()  # a failed SCF may leave the calculator in a bad state
                    continue
                pos.append(st.positions[k])
                num.append(st.numbers[k])
                mid.append(mol)
                en.append(e)
                fo.append(f)
                kinds.append(st.kind)
                splits.append(split)
        bar.close()
    if not pos:
        raise RuntimeError("no structure could be labelled")
    n_at = np.array([len(z) for z in num], np.int64)
    meta = {**s, "seconds": round(time.time() - t0, 1), "single_points": n_calls}
    labels = Labels(np.concatenate(pos), np.concatenate(num).astype(np.int64), np.concatenate([[0], np.cumsum(n_at)]),
                    np.array(mid, np.int64), np.array(en), np.concatenate(fo), np.array(kinds), np.array(splits),
                    meta, failures)
    log.info("%d structures labelled, %d left out, %.0f s", len(labels), len(failures), meta["seconds"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        labels.save(path)
    return labels, path
