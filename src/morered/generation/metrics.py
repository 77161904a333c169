"""Metrics of generated molecules: EDM's stability, RDKit validity, uniqueness and novelty.

Every function takes plain atomic numbers and positions (Å), so any generator's output can be
scored (``morered evaluate generated FILE``).  Each number names the checker that produced it
(:data:`CHECKERS`):

- **EDM stability** (Hoogeboom et al. 2022, ``qm9/bond_analyze.py`` of their public code): the bond
  order of every pair comes from its distance alone with EDM's reference lengths ``bonds1/2/3``
  (pm) and margins 10 / 5 / 3 pm: order 1 if d < b1 + 10, 2 if the pair also has a double length
  and d < b2 + 5, 3 if it also has a triple length and d < b3 + 3.  An atom is stable when the sum
  of its bond orders is an allowed valence (H1 C4 N3 O2 F1, ...); a molecule when all atoms are.
- **Validity** (RDKit): the molecule built from those bonds (every atom of the structure explicit;
  RDKit may add implicit hydrogens to an under-bonded atom, as in EDM), ``Chem.SanitizeMol`` with
  ``SANITIZE_ALL`` and no formal charges.  ``valid``: sanitises *and* is one connected fragment
  (the MoreRed paper's checker); ``valid_edm``: sanitises, fragments allowed, the largest
  fragment's SMILES counts (EDM's ``BasicMolecularMetrics``).
- **Uniqueness / novelty**: canonical SMILES (RDKit, hydrogens removed, no stereochemistry) of the
  valid molecules; novel = not among the SMILES the same checker gives for the QM9 *training*
  split (QM9 minus the val/test ids of the shipped split), computed once and cached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
from ase.data import atomic_numbers
from rdkit import Chem, RDLogger

# ------------------------------------------------------------------ EDM's tables (facts, in pm)
# Reference bond lengths of EDM's qm9/bond_analyze.py (from wiredchemist.com and
# chemistry-reference.com), symmetric; a pair that is absent has no bond of that order.
BONDS1 = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92, "B": 119, "Si": 148, "P": 144, "As": 152, "S": 134,
          "Cl": 127, "Br": 141, "I": 161},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135, "Si": 185, "P": 184, "S": 182, "Cl": 177, "Br": 194,
          "I": 214},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136, "Cl": 175, "Br": 214, "S": 168, "I": 222, "P": 177},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142, "Br": 172, "S": 151, "P": 163, "Si": 163, "Cl": 164,
          "I": 194},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142, "S": 158, "Si": 160, "Cl": 166, "Br": 178, "P": 156,
          "I": 187},
    "B": {"H": 119, "Cl": 175},
    "Si": {"Si": 233, "H": 148, "C": 185, "O": 163, "S": 200, "F": 160, "Cl": 202, "Br": 215, "I": 243},
    "Cl": {"Cl": 199, "H": 127, "C": 177, "N": 175, "O": 164, "P": 203, "S": 207, "B": 175, "Si": 202, "F": 166,
           "Br": 214},
    "S": {"H": 134, "C": 182, "N": 168, "O": 151, "S": 204, "F": 158, "Cl": 207, "Br": 225, "Si": 200, "P": 210,
          "I": 234},
    "Br": {"Br": 228, "H": 141, "C": 194, "O": 172, "N": 214, "Si": 215, "S": 225, "F": 178, "Cl": 214, "P": 222},
    "P": {"P": 221, "H": 144, "C": 184, "O": 163, "Cl": 203, "S": 210, "F": 156, "N": 177, "Br": 222},
    "I": {"H": 161, "C": 214, "Si": 243, "N": 222, "O": 194, "S": 234, "F": 187, "I": 266},
    "As": {"H": 152},
}
BONDS2 = {
    "C": {"C": 134, "N": 129, "O": 120, "S": 160},
    "N": {"C": 129, "N": 125, "O": 121},
    "O": {"C": 120, "N": 121, "O": 121, "P": 150},
    "P": {"O": 150, "S": 186},
    "S": {"P": 186},
}
BONDS3 = {
    "C": {"C": 120, "N": 116, "O": 113},
    "N": {"C": 116, "N": 110},
    "O": {"C": 113},
}
#: EDM's margins (pm) added to the single / double / triple reference lengths
MARGINS = (10, 5, 3)
#: EDM's allowed valences (sum of bond orders) per element
ALLOWED_VALENCES = {"H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "B": (3,), "Al": (3,), "Si": (4,),
                    "P": (3, 5), "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,), "Hg": (1, 2),
                    "Bi": (3, 5)}

#: which checker produced each number of :class:`GenerationMetrics`
CHECKERS = {
    "atom_stability": "EDM: bond orders from EDM's bonds1/2/3 tables, margins 10/5/3 pm; allowed valences",
    "molecule_stability": "EDM: every atom stable (same bond orders and valences)",
    "validity": "RDKit SanitizeMol(SANITIZE_ALL) of the EDM-table bonds, one connected fragment "
                "(MoreRed paper's checker)",
    "validity_edm": "RDKit SanitizeMol(SANITIZE_ALL) of the EDM-table bonds, fragments allowed, largest fragment "
                    "(EDM's BasicMolecularMetrics)",
    "uniqueness": "distinct canonical SMILES (RDKit, H removed, no stereo) / valid",
    "novelty": "unique valid SMILES not among the QM9 training split's SMILES (same checker) / unique",
    "valid_unique": "valid and first of its SMILES / all samples (the paper's 'valid+unique')",
    "valid_unique_novel": "valid, unique and novel / all samples (the paper's 'valid+unique+novel')",
}


def _table(bonds: dict, margin: float) -> np.ndarray:
    """[119, 119] thresholds (pm) indexed by atomic numbers; -inf where the pair has no entry."""
    t = np.full((119, 119), -np.inf)
    for a, row in bonds.items():
        for b, length in row.items():
            t[atomic_numbers[a], atomic_numbers[b]] = t[atomic_numbers[b], atomic_numbers[a]] = length + margin
    return t


_THRESHOLDS = [_table(b, m) for b, m in zip((BONDS1, BONDS2, BONDS3), MARGINS)]
_VALENCES = {atomic_numbers[s]: v for s, v in ALLOWED_VALENCES.items()}


def bond_orders(numbers: Sequence[int], positions: np.ndarray) -> np.ndarray:
    """EDM's bond order (0-3) of every pair from its distance: ``[n, n]`` int, zero diagonal.

    Args:
        numbers: ``[n]`` atomic numbers.
        positions: ``[n, 3]`` Å.
    """
    z = np.asarray(numbers, dtype=np.int64)
    x = np.asarray(positions, dtype=np.float64)
    d = 100.0 * np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # pm, [n, n]
    t1, t2, t3 = (t[z[:, None], z[None, :]] for t in _THRESHOLDS)
    order = (d < t1) * (1 + (d < t2) * (1 + (d < t3)))
    np.fill_diagonal(order, 0)
    return order.astype(np.int64)


def atom_stability(numbers: Sequence[int], orders: np.ndarray) -> np.ndarray:
    """[n] bool: the atom's sum of bond orders is one of its allowed valences (EDM)."""
    valence = orders.sum(1)
    return np.array([int(v) in _VALENCES.get(int(z), ()) for z, v in zip(numbers, valence)], dtype=bool)


def molecule_from_bonds(numbers: Sequence[int], orders: np.ndarray, positions: np.ndarray | None = None) -> Chem.Mol:
    """An unsanitised RDKit molecule with every atom and the given bond orders (and a conformer
    with ``positions`` when given)."""
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    rw = Chem.RWMol()
    for z in numbers:
        rw.AddAtom(Chem.Atom(int(z)))
    i, j = np.nonzero(np.triu(orders, 1))
    for a, b in zip(i.tolist(), j.tolist()):
        rw.AddBond(a, b, kinds[int(orders[a, b])])
    mol = rw.GetMol()
    if positions is not None:
        conf = Chem.Conformer(len(numbers))
        for k, p in enumerate(np.asarray(positions, dtype=np.float64)):
            conf.SetAtomPosition(k, p.tolist())
        conf.Set3D(True)
        mol.AddConformer(conf, assignId=True)
    return mol


def canonical_smiles(mol: Chem.Mol) -> str:
    """Canonical SMILES of a sanitised molecule, hydrogens removed, no stereochemistry."""
    return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False), isomericSmiles=False)


@dataclass
class MoleculeCheck:
    """The verdict on one structure.

    Attributes:
        n_atoms, n_stable_atoms: EDM atom stability counts.
        stable: every atom stable (EDM molecule stability).
        valid: sanitises and is one connected fragment (the MoreRed paper's checker).
        valid_edm: sanitises (EDM; fragments allowed).
        smiles: canonical SMILES when ``valid``; else None.
        smiles_edm: the largest fragment's canonical SMILES when ``valid_edm``; else None.
        n_fragments: connected fragments of the bond graph.
        reason: why it is not valid, else None.
    """

    n_atoms: int
    n_stable_atoms: int
    stable: bool
    valid: bool
    valid_edm: bool
    smiles: str | None
    smiles_edm: str | None
    n_fragments: int
    reason: str | None = None


def check_molecule(numbers: Sequence[int], positions: np.ndarray) -> MoleculeCheck:
    """Stability (EDM) and validity (RDKit) of one structure; see the module docstring."""
    numbers = [int(z) for z in numbers]
    positions = np.asarray(positions, dtype=np.float64)
    if not len(numbers) or not np.isfinite(positions).all():
        return MoleculeCheck(len(numbers), 0, False, False, False, None, None, 0, "no atoms or non-finite coordinates")
    orders = bond_orders(numbers, positions)
    ok = atom_stability(numbers, orders)
    mol = molecule_from_bonds(numbers, orders)
    try:
        Chem.SanitizeMol(mol)  # SANITIZE_ALL
    except Exception as err:  # RDKit raises several types (valence, kekulisation)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return MoleculeCheck(len(numbers), int(ok.sum()), bool(ok.all()), False, False, None, None,
                             len(Chem.GetMolFrags(mol, sanitizeFrags=False)), f"RDKit sanitisation: {reason}")
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    largest = max(frags, key=lambda m: m.GetNumAtoms())
    smiles_edm = canonical_smiles(largest)
    connected = len(frags) == 1
    return MoleculeCheck(len(numbers), int(ok.sum()), bool(ok.all()), connected, True,
                         smiles_edm if connected else None, smiles_edm, len(frags),
                         None if connected else f"{len(frags)} fragments")


def check_molecules(molecules: Iterable[tuple[Sequence[int], np.ndarray]]) -> list[MoleculeCheck]:
    """:func:`check_molecule` of each ``(numbers, positions)``, RDKit's messages silenced."""
    RDLogger.DisableLog("rdApp.*")
    try:
        return [check_molecule(z, x) for z, x in molecules]
    finally:
        RDLogger.EnableLog("rdApp.*")


@dataclass
class GenerationMetrics:
    """Fractions (0-1) over ``n`` samples; :data:`CHECKERS` says which checker gave each."""

    n: int
    atom_stability: float
    molecule_stability: float
    validity: float
    validity_edm: float
    uniqueness: float
    novelty: float | None
    valid_unique: float
    valid_unique_novel: float | None
    checkers: dict = field(default_factory=lambda: dict(CHECKERS))

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """One line per number, in %, with its checker."""
        out = [f"samples: {self.n}"]
        for key in CHECKERS:
            v = getattr(self, key)
            val = "n/a" if v is None else f"{100 * v:5.1f} %"
            out.append(f"{key:<20} {val:>8}   [{CHECKERS[key]}]")
        return out

    def summary(self) -> str:
        """valid / unique / novel in one line."""
        nov = "n/a" if self.valid_unique_novel is None else f"{100 * self.valid_unique_novel:.1f} %"
        return (f"valid {100 * self.validity:.1f} %, valid+unique {100 * self.valid_unique:.1f} %, "
                f"valid+unique+novel {nov}, molecule stability {100 * self.molecule_stability:.1f} %")


def summarize(checks: Sequence[MoleculeCheck], train_smiles: set[str] | None = None) -> GenerationMetrics:
    """Aggregate per-structure checks; novelty only when ``train_smiles`` is given."""
    n = len(checks)
    if n == 0:
        raise ValueError("no structures to evaluate")
    atoms = sum(c.n_atoms for c in checks)
    valid = [c.smiles for c in checks if c.valid]
    unique = set(valid)
    novel = None if train_smiles is None else unique - train_smiles
    return GenerationMetrics(
        n=n,
        atom_stability=sum(c.n_stable_atoms for c in checks) / max(atoms, 1),
        molecule_stability=sum(c.stable for c in checks) / n,
        validity=len(valid) / n,
        validity_edm=sum(c.valid_edm for c in checks) / n,
        uniqueness=len(unique) / len(valid) if valid else 0.0,
        novelty=None if novel is None else (len(novel) / len(unique) if unique else 0.0),
        valid_unique=len(unique) / n,
        valid_unique_novel=None if novel is None else len(novel) / n,
    )


def evaluate(molecules: Iterable[tuple[Sequence[int], np.ndarray]],
             novelty: bool = True) -> tuple[GenerationMetrics, list[MoleculeCheck]]:
    """Check every ``(numbers, positions)`` and aggregate; novelty against the QM9 training split
    (needs the ``qm9pack`` data; computed once, then cached)."""
    checks = check_molecules(molecules)
    return summarize(checks, training_smiles() if novelty else None), checks


# ------------------------------------------------------------------ QM9 training SMILES

#: bump when the checker changes: the cached training SMILES depend on it
CHECKER_VERSION = 1


def training_smiles(cache: bool = True) -> set[str]:
    """Canonical SMILES (this module's checker, connected valid molecules) of the QM9 training
    split, cached as ``qm9_train_smiles_v<CHECKER_VERSION>.txt`` in the morered cache folder."""
    import os

    from morered.data.qm9 import cache_dir, load_qm9, split_ids

    path = cache_dir() / f"qm9_train_smiles_v{CHECKER_VERSION}.txt"
    if cache and path.exists():
        return set(path.read_text().split())
    qm9 = load_qm9()
    ids = split_ids(qm9)["train"]
    where = {int(i): k for k, i in enumerate(qm9.ids)}
    checks = check_molecules((qm9.molecule(where[int(i)])[1], qm9.molecule(where[int(i)])[0]) for i in ids)
    smiles = {c.smiles for c in checks if c.valid}
    if cache:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(sorted(smiles)) + "\n")
        os.replace(tmp, path)
    return smiles
