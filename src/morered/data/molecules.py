"""A set of molecules held as flat arrays, and a DataLoader-friendly view of it."""

from __future__ import annotations

from dataclasses import dataclass

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
