"""The two containers for lists of molecules, and a DataLoader-friendly view of the first.

- :class:`Molecules`: flat float32 arrays with int ids, for training (a batch is a few slices).
- :class:`Structures`: one float64 array per structure, any ids (int or str), and a per-structure
  ``None`` + error where a structure could not be made; for evaluation, displacements and labels.

They stay two on purpose.  Training wants one contiguous float32 block that a DataLoader slices
without copying per molecule and never holds holes; evaluation wants float64 (RMSDs of 1e-3 Å
and finite-difference Hessians lose digits in float32), string ids from users' files, and a
structure that failed to be generated kept in place as ``None`` with its reason, so that it is
counted as a failure instead of silently dropped.  One container serving both would put error
slots and string ids into every training batch, or float32 into every RMSD.  The conversion is one
call each way: :meth:`Structures.from_molecules` and :meth:`Structures.to_molecules`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from morered.data.batch import collate


@dataclass
class Molecules:
    """Many molecules in flat arrays.

    Attributes:
        positions: ``[n_atoms_total, 3]`` float32, Å.
        numbers: ``[n_atoms_total]`` int16 atomic numbers.
        offsets: ``[n_mol + 1]`` int64; molecule k holds atoms ``offsets[k]:offsets[k+1]``.
        ids: ``[n_mol]`` int64 identifiers (QM9 index, or the position in the user's file).
    """

    positions: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_lists(cls, positions, numbers, ids=None) -> "Molecules":
        n = np.array([len(z) for z in numbers], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        ids = np.arange(len(n), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        return cls(
            np.concatenate(positions).astype(np.float32).reshape(-1, 3),
            np.concatenate(numbers).astype(np.int16),
            offsets,
            ids,
        )

    def molecule(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions ``[n, 3]``, numbers ``[n]``) of molecule k."""
        a, b = self.offsets[k], self.offsets[k + 1]
        return self.positions[a:b], self.numbers[a:b]

    def subset(self, index) -> "Molecules":
        index = np.asarray(index, dtype=np.int64)
        pos, num = zip(*(self.molecule(k) for k in index)) if len(index) else ((), ())
        if not len(index):
            return Molecules(np.zeros((0, 3), np.float32), np.zeros(0, np.int16), np.zeros(1, np.int64), np.zeros(0, np.int64))
        return Molecules.from_lists(pos, num, self.ids[index])

    def select_ids(self, ids) -> "Molecules":
        """Molecules whose id is in ``ids``, in the order of ``ids``; unknown ids raise KeyError."""
        where = {int(i): k for k, i in enumerate(self.ids)}
        missing = [int(i) for i in ids if int(i) not in where]
        if missing:
            raise KeyError(f"{len(missing)} ids not in the data set, e.g. {missing[:5]}")
        return self.subset([where[int(i)] for i in ids])

    def n_atoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, index) -> dict[str, torch.Tensor]:
        """A batch (see :mod:`morered.properties`) of the molecules at ``index``."""
        pos, num = zip(*(self.molecule(int(k)) for k in index))
        return collate(pos, num, self.ids[np.asarray(index, dtype=np.int64)])

    def save(self, path) -> None:
        np.savez(path, positions=self.positions, numbers=self.numbers, offsets=self.offsets, ids=self.ids)

    @classmethod
    def load(cls, path) -> "Molecules":
        with np.load(path) as f:
            return cls(f["positions"], f["numbers"], f["offsets"], f["ids"])


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

    def to_molecules(self) -> "Molecules":
        """The structures that have positions, as float32 :class:`Molecules` (int ids required)."""
        keep = [k for k, x in enumerate(self.positions) if x is not None]
        return Molecules.from_lists([self.positions[k] for k in keep], [self.numbers[k] for k in keep],
                                    np.asarray(self.ids)[keep].astype(np.int64))

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


class MoleculeDataset(torch.utils.data.Dataset):
    """Index-only dataset; batches are assembled by :func:`batch_collate` from the arrays."""

    def __init__(self, molecules: Molecules):
        self.molecules = molecules

    def __len__(self) -> int:
        return len(self.molecules)

    def __getitem__(self, k: int) -> int:
        return k

    def collate(self, index: list[int]) -> dict[str, torch.Tensor]:
        return self.molecules.batch(index)
