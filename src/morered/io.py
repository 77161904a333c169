"""Reading and writing the structures that users relax, score or train on.

Formats are chosen by file extension:

- ``.xyz`` / ``.extxyz``: extended XYZ (many frames, per-frame ``key=value`` metadata);
- ``.db``: ASE database (key-value pairs become metadata);
- ``.sdf`` / ``.sd`` / ``.mol``: RDKit, read without sanitisation so that unusual molecules still load;
  a record RDKit cannot parse, or one with implicit hydrogens (MoreRed needs every atom in 3D),
  becomes a :class:`Record` with an ``error``;
- anything else ASE can read (``.traj``, ``.pdb``, ``.cif``, ``.json``, ...) through ``ase.io``.

Every structure becomes a :class:`Record`; per-structure metadata lives in ``record.atoms.info``.
Positions are in Å throughout.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import ase.db
import ase.db.core
import ase.io
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.io.formats import filetype, ioformats, string2index
from rdkit import Chem, rdBase
from rdkit.Chem import rdDetermineBonds

from morered.errors import InputError

__all__ = [
    "Record",
    "StructureReadError",
    "read_structures",
    "StructureStream",
    "validate",
    "write_structures",
    "write_errors",
    "errors_path",
    "atoms_from_mol",
    "mol_from_atoms",
    "mol_with_positions",
    "write_trajectory",
    "check_output_format",
    "atomic_write",
    "remove_stale",
    "progress_bar",
    "one_line",
    "append_structures",
    "append_errors",
    "can_append",
    "output_size",
    "truncate_output",
]

PathLike = str | os.PathLike

#: atoms closer than this (Å) are "overlapping".  Not 0.5: Gaussian-displaced inputs at
#: t = 100-150 (0.25-0.38 Å RMSD) put a C-H pair below 0.5 Å in about 1 of 50 QM9 molecules, and
#: the model relaxes them fine; below 0.3 Å the input is broken.
MIN_DISTANCE = 0.3


@dataclass
class Record:
    """One structure of an input file.

    Attributes:
        name: unique name within the file: the SDF title, ``atoms.info["name"]`` or
            ``atoms.info["id"]``, else ``"<file name>:<index>"``; duplicates get ``":<index>"``.
            For error reports and file names only: written output keeps the original title /
            ``info["name"]``.
        index: position in the file (0-based), whatever ``index`` selection was read.
        atoms: the structure (positions in Å) with its metadata in ``atoms.info``, or None when
            the record could not be read.
        mol: the RDKit molecule (bonds, properties) for SDF/MOL input, else None.
        error: why the record cannot be used (unreadable, or set later by :func:`validate`).
    """

    name: str
    index: int
    atoms: Atoms | None
    mol: Chem.Mol | None = None
    error: str | None = None


class StructureReadError(InputError):
    """A whole file cannot be read (missing, unknown format, not a structure file)."""

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read structures from {self.path}: {reason}")


# ----------------------------------------------------------------------------------- reading


def read_structures(path: PathLike, index: str | int | slice = ":") -> list[Record]:
    """Read all structures of a file (or those selected by ``index``) as records.

    Args:
        path: structure file; the format is chosen by its extension (see the module docstring).
        index: ASE-style selection: ``":"`` (all), ``"-1"``, ``"2:10:2"``, an int or a slice.

    Returns:
        Records in file order. Records RDKit cannot parse (SDF) carry ``error`` and
        ``atoms=None``; they do not stop the others.

    Raises:
        StructureReadError: the file is missing, of unknown format, or holds no readable
            structure.
    """
    path = Path(path)
    _check_input(path)
    fmt = _input_format(path)
    reader = _READERS.get(fmt, _read_ase)
    try:
        records = reader(path, fmt)
    except StructureReadError:
        raise
    except Exception as err:
        raise StructureReadError(path, one_line(f"{type(err).__name__}: {err}")) from err
    if not any(r.atoms is not None for r in records):
        first = next((r for r in records if r.error), None)
        if first is None:
            raise StructureReadError(path, "no structures found")
        more = f" (none of its {len(records)} records is readable)" if len(records) > 1 else ""
        raise StructureReadError(path, f"{first.name}: {first.error}{more}")
    _make_names_unique(records)
    try:
        selected = records[string2index(index) if isinstance(index, str) else index]
    except IndexError:
        raise StructureReadError(path, f"index {index} out of range: {len(records)} "
                                       "structures") from None
    return selected if isinstance(selected, list) else [selected]


def _input_format(path: Path) -> str:
    """The ase format name of ``path``: by extension, else by content (e.g. POSCAR)."""
    for read in (False, True):
        try:
            fmt = filetype(str(path), read=read)
        except Exception:  # ase raises several exception types for unknown files
            continue
        if fmt in _READERS or (fmt in ioformats and ioformats[fmt].can_read):
            return fmt
    raise StructureReadError(path, f"unknown structure format {path.suffix!r}; use .xyz, "
                                   ".extxyz, .db, .sdf, .mol or another format ase.io reads")


def _read_ase(path: Path, fmt: str) -> list[Record]:
    images = ase.io.read(path, ":", format=fmt)
    return [Record(_name_from_info(a.info, path, i), i, a) for i, a in enumerate(images)]


def _read_db(path: Path, fmt: str) -> list[Record]:
    return list(_iter_db(path, fmt))


#: ASE db rows read at a time by the lazy reader
DB_CHUNK = 1000


def _iter_db(path: Path, fmt: str = "db", progress: list | None = None):
    """ASE db rows in id order, :data:`DB_CHUNK` at a time (one short query each)."""
    # connect() would create a missing file; the caller has checked that it exists
    i = 0
    while True:
        with ase.db.connect(path, type="db") as db:
            rows = list(db.select(sort="id", offset=i, limit=DB_CHUNK))
        for row in rows:
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            yield Record(_name_from_info(atoms.info, path, i), i, atoms)
            i += 1
        if progress is not None:
            progress[0] = i
        if len(rows) < DB_CHUNK:
            break


def _iter_ase(path: Path, fmt: str, progress: list | None = None):
    for i, a in enumerate(ase.io.iread(path, ":", format=fmt)):
        yield Record(_name_from_info(a.info, path, i), i, a)


def _read_sdf(path: Path, fmt: str) -> list[Record]:
    return list(_iter_sdf(path, fmt))


#: SDF records handed to RDKit at a time by the lazy reader
SDF_CHUNK = 512


def _iter_sdf(path: Path, fmt: str = "sdf", progress: list | None = None):
    """SDF/MOL record by record, lazily: the file is cut at ``$$$$`` lines into blocks of
    :data:`SDF_CHUNK` records, each parsed by RDKit's SDMolSupplier (unsanitised, hydrogens
    kept). A record RDKit cannot parse, or one with implicit hydrogens, is an error record."""
    offset = 0
    found = False
    with open(path, "rb") as f:
        while True:
            block, n_rec = [], 0
            for raw in f:
                block.append(raw)
                if raw.startswith(b"$$$$"):
                    n_rec += 1
                    if n_rec >= SDF_CHUNK:
                        break
            if progress is not None:
                progress[0] = f.tell()
            text = b"".join(block).decode("utf-8", errors="replace")
            if not text.strip():
                break
            supplier = Chem.SDMolSupplier()
            supplier.SetData(text, sanitize=False, removeHs=False)
            for i in range(len(supplier)):
                found = True
                yield _sdf_record(supplier, i, offset + i, path)
            offset += len(supplier)
            if n_rec < SDF_CHUNK:
                break
    if not found and path.stat().st_size:
        raise StructureReadError(path, "no SDF/MOL record found")


def _sdf_record(supplier, i: int, index: int, path: Path) -> Record:
    with _capture_rdkit_errors() as capture:
        mol = supplier[i]
    if mol is None:
        title = supplier.GetItemText(i).split("\n", 1)[0].strip()
        reason = "RDKit could not parse this record"
        messages = _rdkit_messages(capture)
        return Record(title or f"{path.name}:{index}", index, None, None,
                      f"{reason}: {messages}" if messages else reason)
    atoms = atoms_from_mol(mol)
    name = _name_from_info(atoms.info, path, index)
    n_implicit = _implicit_hydrogens(mol)
    if n_implicit:
        return Record(name, index, None, None, f"{n_implicit} implicit hydrogens: add explicit hydrogens "
                      "(e.g. RDKit Chem.AddHs with 3D coordinates)")
    return Record(name, index, atoms, mol)


def _implicit_hydrogens(mol: Chem.Mol) -> int:
    """Hydrogens RDKit would add to ``mol`` (atoms missing from the structure), 0 if unknown.

    A molecule without bonds is not checked (its valences cannot be known), nor one whose
    valences RDKit cannot compute. Radicals and atoms with a valence field count no hydrogens.
    """
    if mol.GetNumBonds() == 0:
        return 0
    try:
        mol.UpdatePropertyCache(strict=False)
        return sum(a.GetNumImplicitHs() for a in mol.GetAtoms())
    except Exception:  # RDKit raises several types for valences it cannot handle
        return 0


_INT_LINE = re.compile(r"\s*\d+\s*")


def _read_xyz(path: Path, fmt: str) -> list[Record]:
    return list(_iter_xyz(path, fmt))


class _LazyLines:
    """The lines of a text file, read on demand and forgotten behind the current frame: what
    :func:`_iter_xyz` needs to look ahead without holding the file in memory. ``position`` is
    the byte offset read so far (for progress)."""

    def __init__(self, f):
        self._f = f
        self._lines: list[str] = []
        self._first = 0  # the file line number of self._lines[0]
        self._eof = False
        self.position = 0

    def has(self, j: int) -> bool:
        while not self._eof and j >= self._first + len(self._lines):
            raw = self._f.readline()
            if not raw:
                self._eof = True
                break
            self.position += len(raw)
            self._lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        return j < self._first + len(self._lines)

    def __getitem__(self, j: int) -> str:
        if not self.has(j):
            raise IndexError(j)
        return self._lines[j - self._first]

    def slice(self, a: int, b: int) -> list[str]:
        self.has(b - 1)
        return self._lines[max(a - self._first, 0):max(b - self._first, 0)]

    def forget_before(self, j: int) -> None:
        k = j - self._first
        if k > 0:
            del self._lines[:k]
            self._first = j


def _iter_xyz(path: Path, fmt: str = "extxyz", progress: list | None = None):
    """(Extended) XYZ frame by frame, lazily: a frame that does not parse becomes an error record
    naming the frame and its line, and reading resumes at the next atom-count line. Memory holds
    one frame (plus the lines a broken frame spans).

    A frame is ``count`` line, comment line, ``count`` atom lines. When the atom lines do not
    match the count (too few or too many), the frame is an error and reading resumes at the next
    line holding a lone integer. When a count line is not a number, that frame is an error and
    the next frame is taken to start after its atom lines (lines with a symbol and 3 or more
    fields); a stray line right before a count line is skipped. Limitation: a frame with a wrong
    count followed directly by one with a non-numeric count line become one error record.

    ``progress``, when given, is a one-element list receiving the bytes read so far.
    """
    with open(path, "rb") as f:
        lines = _LazyLines(f)
        yield from _xyz_frames(lines, path, progress)


def _xyz_frames(lines: "_LazyLines", path: Path, progress: list | None):
    i, k = 0, 0

    def next_header(j: int) -> int:
        while lines.has(j) and not _INT_LINE.fullmatch(lines[j]):
            j += 1
        return j

    def error(start: int, reason: str) -> Record:
        comment = lines[start + 1] if lines.has(start + 1) else ""
        m = re.search(r"(?:^|\s)(?:name|id)=(\"[^\"]*\"|\S+)", comment)
        name = m.group(1).strip('"').strip() if m else ""
        return Record(name or f"{path.name}:{k}", k, None, None, f"frame {k} (line {start + 1}): {reason}")

    while lines.has(i):
        lines.forget_before(i)
        if progress is not None:
            progress[0] = lines.position
        if not lines[i].strip():
            i += 1
            continue
        if not _INT_LINE.fullmatch(lines[i]):
            if k == 0 and not lines.has(next_header(i + 1)):
                raise StructureReadError(path, f"line {i + 1} is not an atom count: not an XYZ file")
            if lines.has(i + 1) and _INT_LINE.fullmatch(lines[i + 1]):
                i += 1  # a stray line before a count line: not a frame
                continue
            # a frame whose count line is broken: its comment and atom lines follow
            m = sum(1 for _ in _atom_like(lines, i + 2))
            yield error(i, f"expected an atom count, found {lines[i].strip()[:40]!r}")
            k += 1
            i = i + 2 + m
            continue
        n = int(lines[i])
        end = i + 2 + n
        atom_lines = lines.slice(i + 2, end)
        follows = lines[end] if lines.has(end) else ""
        too_few = len(follows.split()) >= 4 and not _INT_LINE.fullmatch(follows)  # an atom line follows
        too_many = any(_INT_LINE.fullmatch(a) for a in atom_lines)  # the next count line was swallowed
        if not lines.has(end - 1) or too_few or too_many:
            m = sum(1 for _ in _atom_like(lines, i + 2))
            yield error(i, f"the count line says {n} atoms but {m} atom lines follow")
            k += 1
            i = next_header(i + 2)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atoms = ase.io.read(io.StringIO("\n".join(lines.slice(i, end)) + "\n"), 0, format="extxyz")
        except Exception as err:  # ase raises many types for a bad frame
            yield error(i, one_line(f"{type(err).__name__}: {err}"))
        else:
            yield Record(_name_from_info(atoms.info, path, k), k, atoms)
        k += 1
        i = end
    if progress is not None:
        progress[0] = lines.position


_LAZY_READERS: dict[str, Callable] = {
    "extxyz": _iter_xyz,
    "xyz": _iter_xyz,
    "db": _iter_db,
    "sdf": _iter_sdf,
    "sd": _iter_sdf,
    "mol": _iter_sdf,
}


class StructureStream:
    """The records of a structure file, read lazily (xyz/extxyz frame by frame, SDF record by
    record, ASE db rows in chunks, other formats through ``ase.io.iread``), in file order.

    Unlike :func:`read_structures`, names are not made unique (that needs the whole file): the
    ``index`` column of an errors file tells duplicates apart. The file checks and the error for
    a file without a single readable structure are :func:`read_structures`' (raised when
    iteration starts, before the first record is returned).

    ``fraction()`` is how far reading has got (0..1, by bytes or rows), for an ETA.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        _check_input(self.path)
        self.format = _input_format(self.path)
        self._progress = [0]
        if self.format == "db":
            with ase.db.connect(self.path, type="db") as db:
                self._size = db.count()
        else:
            self._size = self.path.stat().st_size

    def fraction(self) -> float | None:
        if self.format not in _LAZY_READERS or not self._size:
            return None
        return min(1.0, self._progress[0] / self._size)

    def __iter__(self):
        reader = _LAZY_READERS.get(self.format)
        it = reader(self.path, self.format, self._progress) if reader else _iter_ase(self.path, self.format)
        head: list[Record] = []
        try:
            for rec in it:  # hold the error records before the first readable one
                head.append(rec)
                if rec.atoms is not None:
                    break
        except StructureReadError:
            raise
        except Exception as err:
            raise StructureReadError(self.path, one_line(f"{type(err).__name__}: {err}")) from err
        if not head or head[-1].atoms is None:
            if not head:
                raise StructureReadError(self.path, "no structures found")
            more = f" (none of its {len(head)} records is readable)" if len(head) > 1 else ""
            raise StructureReadError(self.path, f"{head[0].name}: {head[0].error}{more}")
        yield from head
        del head
        yield from it


def _check_input(path: Path) -> None:
    if path.is_dir():
        raise StructureReadError(path, "is a directory, not a structure file")
    if not path.is_file():
        raise StructureReadError(path, "no such file")
    if not os.access(path, os.R_OK):
        raise StructureReadError(path, "permission denied")


def _atom_like(lines: "_LazyLines", j: int):
    """Lines from ``j`` on that look like atom lines (symbol and 3 or more fields)."""
    while lines.has(j) and len(lines[j].split()) >= 4 and not _INT_LINE.fullmatch(lines[j]):
        yield lines[j]
        j += 1


_READERS: dict[str, Callable[[Path, str], list[Record]]] = {
    "extxyz": _read_xyz,
    "xyz": _read_xyz,
    "db": _read_db,
    "sdf": _read_sdf,
    "sd": _read_sdf,
    "mol": _read_sdf,
}


def _name_from_info(info: dict, path: Path, i: int) -> str:
    for key in ("name", "id"):
        value = info.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return f"{path.name}:{i}"


def _make_names_unique(records: list[Record]) -> None:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.name] = counts.get(r.name, 0) + 1
    taken = set(counts)
    for r in records:
        if counts[r.name] > 1:
            name = f"{r.name}:{r.index}"
            while name in taken:
                name += "'"
            taken.add(name)
            r.name = name


class _NoCapture:
    messages = ""

    def __enter__(self):
        self._block = rdBase.BlockLogs()
        return self

    def __exit__(self, *exc):
        del self._block


def _capture_rdkit_errors():
    # CaptureErrorLog is recent RDKit; older versions only get the messages silenced
    return rdBase.CaptureErrorLog() if hasattr(rdBase, "CaptureErrorLog") else _NoCapture()


def _rdkit_messages(capture) -> str:
    text = capture.messages if isinstance(capture.messages, str) else "\n".join(capture.messages)
    lines = [re.sub(r"^\[[\d:]+\]\s*(ERROR:\s*)?", "", line).strip() for line in text.splitlines()]
    return one_line("; ".join(line for line in lines if line and "moving to the beginning" not in line))


#: the longest reason kept in an errors file or message
MAX_REASON = 300


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """``text`` as one line for an errors file or a message: C++ stack traces (RDKit's ``****``
    blocks: ``Violation occurred on line ...``, ``Failed Expression``, numbered frames) dropped,
    whitespace collapsed, cut at ``limit`` characters."""
    kept = []
    for line in str(text).splitlines():
        t = line.strip()
        if (not t or set(t) <= set("*=-") or _TRACE_LINE.match(t)):
            continue
        kept.append(t)
    out = " ".join(" ".join(kept).split())
    return out if len(out) <= limit else out[:limit - 3].rstrip() + "..."


_TRACE_LINE = re.compile(r"(Violation occurred on line|Failed Expression|RDKIT:|BOOST:|\d+#|#\d+\s|"
                         r"at 0x|in /|File \"|Traceback)")


# ----------------------------------------------------------------------------------- RDKit


def atoms_from_mol(mol: Chem.Mol, conf_id: int = -1) -> Atoms:
    """An ``ase.Atoms`` from an RDKit molecule's conformer.

    Args:
        mol: molecule with at least one conformer (coordinates in Å).
        conf_id: which conformer (-1: the default one).

    Returns:
        Atoms with the molecule's atomic numbers and positions ``[n_atoms, 3]`` (Å); formal
        charges as initial charges when any is non-zero; ``info`` holds the molecule's
        properties (numbers parsed from text where exact) and ``"name"`` (the title) when set.
    """
    if mol.GetNumConformers() == 0:
        raise ValueError("the molecule has no conformer (no coordinates)")
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    positions = mol.GetConformer(conf_id).GetPositions() if numbers else np.zeros((0, 3))
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    atoms = Atoms(numbers=numbers, positions=positions, charges=charges if any(charges) else None)
    for key in mol.GetPropNames(includePrivate=False, includeComputed=False):
        atoms.info[key] = _from_text(mol.GetProp(key))
    if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
        atoms.info["name"] = mol.GetProp("_Name").strip()
    return atoms


def mol_with_positions(mol: Chem.Mol, positions: np.ndarray) -> Chem.Mol:
    """A copy of ``mol`` (bonds, properties) whose only conformer has ``positions``.

    Args:
        mol: template molecule.
        positions: ``[n_atoms, 3]`` in Å, in the molecule's atom order.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (mol.GetNumAtoms(), 3):
        raise ValueError(f"positions of shape {positions.shape} for a molecule of "
                         f"{mol.GetNumAtoms()} atoms")
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, xyz in enumerate(positions):
        conf.SetAtomPosition(i, xyz.tolist())
    conf.Set3D(True)
    out.AddConformer(conf, assignId=True)
    return out


def mol_from_atoms(atoms: Atoms, bonds: bool = True) -> Chem.Mol:
    """An RDKit molecule from ``atoms``: all hydrogens explicit, connectivity from distances.

    Args:
        atoms: the structure (positions in Å); initial charges become formal charges.
        bonds: perceive single bonds with ``rdDetermineBonds.DetermineConnectivity``; a
            molecule whose perception fails is returned without bonds.
    """
    rw = Chem.RWMol()
    charges = np.rint(atoms.get_initial_charges()).astype(int)
    for z, q in zip(atoms.numbers, charges):
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)  # the structure lists every atom; RDKit must not add H
        atom.SetFormalCharge(int(q))
        rw.AddAtom(atom)
    mol = mol_with_positions(rw.GetMol(), atoms.positions)
    if bonds and len(atoms) > 1:
        try:
            with rdBase.BlockLogs():
                rdDetermineBonds.DetermineConnectivity(mol)
        except Exception:
            mol = mol_with_positions(rw.GetMol(), atoms.positions)
    return mol


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _from_text(text: str) -> Any:
    """SDF property text as int, float or bool where that is exact, else the text itself."""
    t = text.strip()
    if t in ("True", "False"):
        return t == "True"
    if not _NUMBER.fullmatch(t) or re.match(r"[+-]?0\d", t):  # "007" is an identifier
        return text
    return int(t) if re.fullmatch(r"[+-]?\d+", t) else float(t)


# ----------------------------------------------------------------------------------- validation


#: the largest interatomic distance in QM9 (Å), for models that do not store their own
QM9_MAX_DISTANCE = 12.04


def validate(atoms: Atoms, *, elements: set[int], max_atoms: int,
             min_distance: float = MIN_DISTANCE, max_extent: float | None = None,
             max_gap: float | None = None) -> str | None:
    """Why a model trained on ``elements`` cannot relax ``atoms``, or None if it can.

    Checks: at least 2 and at most ``max_atoms`` atoms, only known elements, finite
    coordinates, no pair of atoms closer than ``min_distance``, no pair farther apart than
    ``max_extent`` (a far-away atom or fragment: the model never saw such a structure, and the
    reverse step, which scales positions about the centroid, would drag the others along), and
    no group of atoms more than ``max_gap`` from all the others (disconnected fragments the
    network cannot see from each other). Periodic cells are ignored (distances without minimum
    image).

    Args:
        atoms: the structure, positions ``[n_atoms, 3]`` in Å.
        elements: atomic numbers the model was trained on.
        max_atoms: the largest structure the model accepts.
        min_distance: smallest allowed interatomic distance, Å.
        max_extent: largest allowed interatomic distance, Å (None: no limit).
        max_gap: largest allowed distance between disconnected groups of atoms, Å (None: no
            limit), e.g. the network's cutoff.

    Returns:
        ``"; "``-joined reasons, or None when the structure is fine.
    """
    numbers = np.asarray(atoms.numbers)
    positions = np.asarray(atoms.positions, dtype=np.float64)
    n = len(numbers)
    reasons = []
    if n < 2:
        reasons.append(f"{n} atom(s); at least 2 are needed")
    if n > max_atoms:
        reasons.append(f"{n} atoms; the model accepts at most {max_atoms}")
    unknown = sorted(set(numbers.tolist()) - set(elements))
    if unknown:
        known = ", ".join(_symbol(z) for z in sorted(elements))
        reasons.append(f"elements the model was not trained on: "
                       f"{', '.join(_symbol(z) for z in unknown)} (it knows {known})")
    finite = np.isfinite(positions).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        reasons.append(f"non-finite coordinates (NaN or inf) for {len(bad)} atom(s), "
                       f"e.g. atom {bad[0]}")
    elif 2 <= n <= max_atoms:
        with np.errstate(over="ignore", invalid="ignore"):  # 1e200 Å apart is just "too far"
            diff = positions[:, None, :] - positions[None, :, :]  # [n, n, 3]
            dist = np.sqrt((diff**2).sum(-1))  # [n, n]
        overlap = _closest_pairs(numbers, dist, min_distance)
        if overlap:
            reasons.append(overlap)
        far = _extent(numbers, dist, max_extent, max_gap)
        if far:
            reasons.append(far)
    return "; ".join(reasons) or None


def _extent(numbers: np.ndarray, dist: np.ndarray, max_extent: float | None,
            max_gap: float | None) -> str | None:
    if max_extent is not None:
        a, b = np.unravel_index(np.argmax(dist), dist.shape)
        if dist[a, b] > max_extent:
            return (f"too spread out: atoms {a} ({_symbol(numbers[a])}) and {b} ({_symbol(numbers[b])}) are "
                    f"{dist[a, b]:.3g} Å apart, the model supports at most {max_extent:.1f} Å "
                    "(a misplaced atom or fragment?)")
    if max_gap is not None:
        from scipy.sparse.csgraph import connected_components

        n_groups, label = connected_components(dist <= max_gap, directed=False)
        if n_groups > 1:
            sizes = np.bincount(label)
            small = int(np.argmin(sizes))
            first = int(np.flatnonzero(label == small)[0])
            return (f"disconnected: {n_groups} groups of atoms more than {max_gap:g} Å apart (the model's "
                    f"cutoff), e.g. atom {first} ({_symbol(numbers[first])}) in a group of {sizes[small]}")
    return None


def _closest_pairs(numbers: np.ndarray, dist: np.ndarray, min_distance: float) -> str | None:
    i, j = np.triu_indices(len(numbers), k=1)
    d = dist[i, j]
    close = np.flatnonzero(d < min_distance)
    if not len(close):
        return None
    k = close[np.argmin(d[close])]
    a, b = i[k], j[k]
    more = f" ({len(close)} pairs in all)" if len(close) > 1 else ""
    return (f"overlapping atoms: {a} ({_symbol(numbers[a])}) and {b} ({_symbol(numbers[b])}) "
            f"are {d[k]:.3f} Å apart, below {min_distance} Å{more}")


def _symbol(z: int) -> str:
    z = int(z)
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"


# ----------------------------------------------------------------------------------- writing


def write_structures(path: PathLike, records: Sequence[Record],
                     results: Sequence[dict[str, Any]]) -> list[Record]:
    """Write the relaxed structures, in input order, in the format of ``path``'s extension.

    Args:
        path: output file (``.xyz``, ``.extxyz``, ``.db``, ``.sdf`` or another format ASE
            writes). It is replaced as a whole, only after every record was converted (written
            to a temporary file in the same folder, then renamed). When no record has positions,
            nothing is written and an earlier file at ``path`` is removed.
        records: the records that were relaxed.
        results: one dict per record: ``"positions"`` (``[n_atoms, 3]`` Å, or None when that
            record failed), optionally ``"error"`` (why it failed), and extra per-structure
            fields (e.g. ``morered_steps``, ``morered_converged``) stored as metadata: extxyz
            info, ASE db key-value pairs, SDF properties (as text).

    Returns:
        The records that were not written (no positions), each with ``error`` set (the
        record's own error, else ``results[k]["error"]``, else "relaxation failed"), for
        :func:`write_errors`.
    """
    if len(records) != len(results):
        raise ValueError(f"{len(records)} records but {len(results)} results")
    path = Path(path)
    fmt = _output_format(path)
    done, failed = _split_results(records, results)
    if done:
        with atomic_write(path) as tmp:
            _WRITERS.get(fmt, _write_ase)(tmp, fmt, done)
    else:  # nothing to write: no empty file (a 0-byte extxyz is not readable), no stale one
        remove_stale(path)
    return failed


def errors_path(output: PathLike) -> Path:
    """Where the errors of ``output`` go: ``relaxed.sdf`` -> ``relaxed.errors.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.errors.csv")


def write_errors(path: PathLike, records: Sequence[Record]) -> None:
    """Write a CSV with columns ``index,name,reason`` (one row per record, the reason on one
    line), atomically; with no records, remove an earlier errors file at ``path`` instead (a
    clean run leaves no stale errors behind)."""
    if not records:
        remove_stale(path)
        return
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "name", "reason"])
        for r in records:
            writer.writerow([r.index, r.name, one_line(r.error or "")])


@contextlib.contextmanager
def atomic_write(path: PathLike):
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``
    (``os.replace``: readers see the old file or the complete new one, never a half-written one);
    on an exception (including KeyboardInterrupt) it is removed and ``path`` is left as it was.

    Usage::

        with atomic_write("out.csv") as tmp, open(tmp, "w") as f:
            f.write(...)
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.is_dir():  # some writers (ase.db) would make a folder of a missing file: never
            raise OSError(f"{tmp} became a directory")
        try:
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError:
            pass
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale(path: PathLike) -> None:
    """Remove the file ``path`` if it exists (an output of an earlier run that this run does
    not replace)."""
    path = Path(path)
    if path.is_file() or path.is_symlink():
        path.unlink()


def write_trajectory(path: PathLike, numbers: np.ndarray, positions_list: Sequence[np.ndarray],
                     t_hat_list: Sequence[int], name: str) -> None:
    """Write a relaxation trajectory as one extxyz file, one frame per step.

    Args:
        path: output file (read it with ``ase gui`` or ``ase.io.read(path, ":")``).
        numbers: ``[n_atoms]`` atomic numbers.
        positions_list: ``n_steps`` arrays ``[n_atoms, 3]`` in Å.
        t_hat_list: ``n_steps`` predicted diffusion steps, stored as ``info["t_hat"]``.
        name: the structure's name, stored as ``info["name"]``.
    """
    if len(positions_list) != len(t_hat_list):
        raise ValueError(f"{len(positions_list)} frames but {len(t_hat_list)} t_hat values")
    frames = []
    for step, (positions, t_hat) in enumerate(zip(positions_list, t_hat_list)):
        atoms = Atoms(numbers=numbers, positions=np.asarray(positions, dtype=np.float64))
        atoms.info.update(name=str(name), step=step, t_hat=_plain(t_hat))
        frames.append(atoms)
    with atomic_write(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


def _output_format(path: Path) -> str:
    try:
        fmt = filetype(str(path), read=False)
    except Exception as err:
        raise ValueError(f"unknown output format for {path}") from err
    if fmt not in _WRITERS and not (fmt in ioformats and ioformats[fmt].can_write):
        raise ValueError(f"cannot write {fmt!r} files ({path}); use .xyz, .extxyz, .db or .sdf")
    return fmt


_Item = tuple[Record, np.ndarray, dict[str, Any]]  # record, new positions [n, 3] Å, extra fields


def _relaxed_atoms(record: Record, positions: np.ndarray, fields: dict[str, Any]) -> Atoms:
    atoms = record.atoms.copy()  # without the calculator: old energies/forces no longer apply
    atoms.positions = positions
    atoms.info.update(fields)
    return atoms


def _write_extxyz(path: Path, fmt: str, items: list[_Item]) -> None:
    frames = []
    for record, positions, fields in items:
        atoms = _relaxed_atoms(record, positions, fields)
        atoms.info = _extxyz_info(atoms.info)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


_EXTXYZ_RESERVED = {"Properties", "Lattice", "pbc"}


def _extxyz_info(info: dict[str, Any]) -> dict[str, Any]:
    """Metadata that survives one extxyz comment line: no newlines, no nested objects."""
    out = {}
    for key, value in info.items():
        value = _plain(value)
        if value is None or key in _EXTXYZ_RESERVED:
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim <= 2:
            out[key] = value
        elif isinstance(value, (bool, int, float)):
            out[key] = value
        else:
            out[key] = " ".join(_text(value).split("\n"))
    return out


def _write_db(path: Path, fmt: str, items: list[_Item], append: bool = False) -> None:
    """Rows of an ASE db, in one transaction (``append``: after the rows already there)."""
    with ase.db.connect(path, type="db", append=append) as db:
        for record, positions, fields in items:
            atoms = _relaxed_atoms(record, positions, fields)
            kvp, data = _db_split(atoms.info)
            atoms.info = {}
            db.write(atoms, key_value_pairs=kvp, data=data)


def _db_split(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata as ASE db key-value pairs where ase.db allows them; the rest as row data."""
    kvp, data = {}, {}
    for key, value in info.items():
        value = _plain(value)
        if value is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # keys that read as formulas break db.select
                ase.db.core.check({key: value})
            kvp[key] = value
        except (ValueError, UserWarning):
            data[str(key)] = value
    return kvp, data


def _write_sdf(path: Path, fmt: str, items: list[_Item]) -> None:
    writer = Chem.SDWriter(str(path))
    writer.SetKekulize(False)  # write bonds as read: unsanitised molecules may not kekulize
    try:
        for record, positions, fields in items:
            if record.mol is not None:
                mol = mol_with_positions(record.mol, positions)
                props = fields
            else:
                atoms = _relaxed_atoms(record, positions, fields)
                mol = mol_from_atoms(atoms)
                props = {k: v for k, v in atoms.info.items() if k != "name"}
                mol.SetProp("_Name", _sdf_text(atoms.info.get("name", "")).replace("\n", " "))
            for key, value in props.items():
                value = _plain(value)
                if value is not None:
                    mol.SetProp(_sdf_key(key), _sdf_text(value))
            writer.write(mol)  # the title is the input's (record.mol keeps its _Name)
    finally:
        writer.close()


def _sdf_key(key: str) -> str:
    return re.sub(r"[<>\s]+", "_", str(key)).strip("_") or "property"


def _sdf_text(value: Any) -> str:
    # a blank line ends an SDF data item
    return "\n".join(line for line in _text(value).splitlines() if line.strip())


def _write_ase(path: Path, fmt: str, items: list[_Item]) -> None:
    ase.io.write(path, [_relaxed_atoms(*item) for item in items], format=fmt)


_WRITERS: dict[str, Callable[[Path, str, list[_Item]], None]] = {
    "extxyz": _write_extxyz,
    "db": _write_db,
    "sdf": _write_sdf,
    "sd": _write_sdf,
}


def _plain(value: Any) -> Any:
    """numpy scalars as Python scalars; other values unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, np.ndarray):
        return " ".join(_text(_plain(v)) for v in value.ravel())
    if isinstance(value, (list, tuple)):
        return " ".join(_text(_plain(v)) for v in value)
    return str(value)


def check_output_format(path: PathLike) -> str:
    """The format :func:`write_structures` will use for ``path``; ValueError if it cannot write
    one (call before doing the work whose result goes there)."""
    return _output_format(Path(path))


# ----------------------------------------------------------------------------------- progress


def progress_bar(total: int | None, desc: str, unit: str = "it", disable: bool = False, stream=None,
                 machine: bool = False):
    """A tqdm progress bar on stderr that does not flood logs: on a terminal it refreshes every
    0.1 s; when stderr is not a terminal (CI, nohup, a cluster job) at most every
    :data:`PROGRESS_LOG_INTERVAL` seconds, one line each (no carriage-return animation).

    ``machine=True``: off a terminal each of those lines is machine-readable instead, ``PROGRESS``
    and a JSON object: ``done``, ``total`` (may be an estimate, or null), ``rate`` (per second),
    ``elapsed_s``, ``eta_s`` (null when unknown) and the counts set in ``bar.counts`` (e.g.
    converged, rejected). On a terminal the counts are shown after the bar.
    """
    import sys

    from tqdm.auto import tqdm

    stream = sys.stderr if stream is None else stream
    tty = bool(getattr(stream, "isatty", lambda: False)())
    cls = _MachineProgress if machine and not tty else tqdm
    return cls(total=total, desc=desc, unit=unit, file=stream, disable=disable,
               mininterval=0.1 if tty else PROGRESS_LOG_INTERVAL, maxinterval=max(10.0, PROGRESS_LOG_INTERVAL),
               miniters=1 if tty else 0, dynamic_ncols=tty, ascii=not tty, ncols=None if tty else 80)


def _machine_progress_class():
    from tqdm.std import tqdm

    class MachineProgress(tqdm):
        """tqdm whose every display is one ``PROGRESS {json}`` line."""

        counts: dict = {}

        def display(self, msg=None, pos=None):
            import json

            d = self.format_dict
            n, total, elapsed = d["n"], d["total"], d["elapsed"]
            rate = n / elapsed if elapsed > 0 else None
            eta = (total - n) / rate if total and rate else None
            line = {"desc": self.desc, "done": n, "total": total, "rate": None if rate is None else round(rate, 3),
                    "elapsed_s": round(elapsed, 1), "eta_s": None if eta is None else round(max(eta, 0.0), 1),
                    **self.counts}
            self.fp.write("PROGRESS " + json.dumps(line) + "\n")
            self.fp.flush()
            return True

    return MachineProgress


class _LazyClass:
    def __init__(self, factory):
        self._factory, self._cls = factory, None

    def __call__(self, *a, **k):
        if self._cls is None:
            self._cls = self._factory()
        return self._cls(*a, **k)


_MachineProgress = _LazyClass(_machine_progress_class)


#: seconds between progress lines when stderr is not a terminal
PROGRESS_LOG_INTERVAL = float(os.environ.get("MORERED_PROGRESS_INTERVAL", "30"))


# ----------------------------------------------------------------------------------- appending


def append_structures(path: PathLike, records: Sequence[Record], results: Sequence[dict[str, Any]]) -> list[Record]:
    """Append relaxed structures to ``path`` as complete records, for streaming outputs.

    extxyz/xyz and SDF: the chunk is written by the same writer as :func:`write_structures` into
    a temporary file, then appended to ``path`` with one write and an fsync, so the file is
    readable up to its last complete record at any moment (a torn final chunk, after a crash
    mid-write, is cut off by ``--resume`` from the recorded size). ASE db: the rows are written
    in one transaction (a crash leaves the earlier commits). Other formats cannot be appended:
    ValueError (see :func:`can_append`). Nothing is created when no record has positions.

    Returns the records not written, with ``error`` set, as :func:`write_structures`.
    """
    path = Path(path)
    fmt = _output_format(path)
    done, failed = _split_results(records, results)
    if not done:
        return failed
    if fmt == "db":
        _write_db(path, fmt, done, append=True)
        return failed
    if fmt not in _APPENDABLE:
        raise ValueError(f"cannot append to {fmt!r} files")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".chunk" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        _WRITERS.get(fmt, _write_ase)(Path(name), fmt, done)
        data = Path(name).read_bytes()
    finally:
        os.unlink(name)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return failed


_APPENDABLE = {"extxyz", "xyz", "sdf", "sd"}


def can_append(path: PathLike) -> bool:
    """Whether :func:`append_structures` can stream into ``path``'s format."""
    fmt = _output_format(Path(path))
    return fmt == "db" or fmt in _APPENDABLE


def output_size(path: PathLike) -> int:
    """The committed size of a streamed output: rows of an ASE db, else bytes (0 if missing)."""
    path = Path(path)
    if not path.exists():
        return 0
    if _is_db(path):
        with ase.db.connect(path, type="db") as db:
            return db.count()
    return path.stat().st_size


def truncate_output(path: PathLike, size: int) -> None:
    """Cut a streamed output back to ``size`` (rows of an ASE db, else bytes): what a resumed
    run does with whatever an interrupted run wrote after its last recorded chunk."""
    path = Path(path)
    if not path.exists():
        return
    if _is_db(path):
        with ase.db.connect(path, type="db") as db:
            ids = [row.id for row in db.select(sort="id", offset=size)]
            if ids:
                db.delete(ids)
        if size == 0:
            path.unlink()
        return
    if size == 0:
        path.unlink()
        return
    with open(path, "r+b") as f:
        f.truncate(size)


def _is_db(path: Path) -> bool:
    try:
        return filetype(str(path), read=False) == "db"
    except Exception:
        return False


def append_errors(path: PathLike, records: Sequence[Record]) -> None:
    """Append rows ``index,name,reason`` to the errors CSV ``path`` (the header first when the
    file is new), flushed and fsync'ed: complete rows at any moment."""
    if not records:
        return
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    writer = csv.writer(buf)
    if new:
        writer.writerow(["index", "name", "reason"])
    for r in records:
        writer.writerow([r.index, r.name, one_line(r.error or "")])
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def _split_results(records, results):
    if len(records) != len(results):
        raise ValueError(f"{len(records)} records but {len(results)} results")
    done, failed = [], []
    for record, result in zip(records, results):
        positions = result.get("positions")
        if positions is None:
            reason = record.error or result.get("error") or "relaxation failed"
            failed.append(replace(record, error=str(reason)))
            continue
        if record.atoms is None:
            raise ValueError(f"record {record.name!r} has positions but no atoms")
        fields = {k: _plain(v) for k, v in result.items() if k not in ("positions", "error")}
        done.append((record, np.asarray(positions, dtype=np.float64).reshape(-1, 3), fields))
    return done, failed
