"""QM7-X from its official HDF5 files (SPEC §12), for users who have them; and the paper's split.

Layout of the release: files ``1000.hdf5`` ... ``8000.hdf5`` (one per range of molecule ids),
``f[mol_id][conf_id]`` with ``mol_id`` a number string and ``conf_id`` ``Geom-m{r}-i{s}-c{t}-opt``
(the equilibrium structure of conformer c of isomer i of molecular graph m) or ``...-d1`` ...
``...-d100`` (non-equilibrium structures displaced from it).  Datasets used here: ``atNUM`` (N),
``atXYZ`` (Å, N×3), ``ePBE0+MBD`` (eV, 1 element), ``totFOR`` (eV/Å, N×3) and ``sRMSD`` (Å to the
-opt structure).  ``DupMols.dat`` (next to the files) lists duplicate conformers, one conformation
id a line: every conformation of those conformers is dropped.

A group that cannot be read (a corrupted group, a missing dataset, inconsistent shapes) is skipped
and recorded in ``errors`` naming the file, group and reason; the rest is read.  Needs ``h5py``:
``pip install 'morered[qm7x]'``.

The paper's protocol: split by molecular graph (the m index), so that no test graph (with any of
its isomers and conformers) is seen in training: 4500 graphs train, 1250 validation, the rest
test; train on equilibrium structures only; for each test reference sort its displaced structures
by RMSD and take the closest, the middle and the farthest as relaxation inputs.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morered.data.molecules import Molecules
from morered.errors import InputError

#: the paper's split sizes, in molecular graphs (the rest is test)
N_TRAIN_GRAPHS, N_VAL_GRAPHS = 4500, 1250
#: molecular graphs in the QM7-X release; a folder with fewer is split in the same proportions
N_GRAPHS_RELEASE = 6950
ENERGY, FORCES, RMSD = "ePBE0+MBD", "totFOR", "sRMSD"
_CONF = re.compile(r"^Geom-m(\d+)-i(\d+)-c(\d+)-(opt|d(\d+))$")
KINDS = ("closest", "middle", "farthest")


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise InputError("reading QM7-X needs h5py, in the extra 'qm7x': pip install 'morered[qm7x]'") from e
    return h5py


def parse_conformation(conf_id: str) -> tuple[int, int, int, int] | None:
    """``Geom-m12-i3-c4-d56`` -> ``(12, 3, 4, 56)``; ``-opt`` has displacement 0; None if not a
    conformation id."""
    m = _CONF.match(conf_id)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(5) or 0)


def conformer_key(conf_id: str) -> str:
    """``Geom-m12-i3-c4-d56`` (or ``-opt``) -> ``Geom-m12-i3-c4``: the conformer all its
    displaced structures belong to."""
    return conf_id.rsplit("-", 1)[0]


def qm7x_files(path) -> list[Path]:
    """The HDF5 files of ``path``: a folder (its ``*.hdf5``, sorted by number) or one file."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise InputError(f"QM7-X: {p} is neither a folder nor a file")
    files = sorted(p.glob("*.hdf5"), key=lambda f: (not f.stem.isdigit(), int(f.stem) if f.stem.isdigit() else 0, f.name))
    if not files:
        raise InputError(f"QM7-X: no *.hdf5 files in {p} (expected 1000.hdf5 ... 8000.hdf5)")
    return files


def read_duplicates(path) -> set[str]:
    """Conformer keys listed in ``DupMols.dat`` beside the files (empty set if there is none)."""
    p = Path(path)
    f = (p if p.is_dir() else p.parent) / "DupMols.dat"
    if not f.exists():
        return set()
    return {conformer_key(line.strip()) for line in f.read_text().splitlines() if line.strip()}


@dataclass
class QM7XSet:
    """Conformations read from QM7-X, in file order.

    Attributes:
        molecules: centred positions (float32) and atomic numbers; ids are 0..n-1 (the row here).
        keys: conformation ids (``Geom-m1-i1-c1-opt``).
        graph, displacement: the m index and the displacement k (0 for -opt) of each.
        energy: ``ePBE0+MBD`` in eV (NaN where not read).
        forces: ``totFOR`` in eV/Å, ``[n_atoms_total, 3]`` like the positions (None if not read).
        rmsd: ``sRMSD`` in Å to the -opt structure (NaN where not read).
        errors: one line per group that could not be read: file, group, reason.
    """

    molecules: Molecules
    keys: np.ndarray
    graph: np.ndarray
    displacement: np.ndarray
    energy: np.ndarray
    forces: np.ndarray | None
    rmsd: np.ndarray
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def _read_conformation(group, props: bool) -> tuple:
    z = np.asarray(group["atNUM"][()], np.int64).reshape(-1)
    x = np.asarray(group["atXYZ"][()], np.float64)
    if x.shape != (len(z), 3):
        raise ValueError(f"atXYZ has shape {x.shape}, atNUM {len(z)} atoms")
    if not np.isfinite(x).all():
        raise ValueError("atXYZ holds non-finite values")
    e = f = None
    if props:
        e = float(np.asarray(group[ENERGY][()]).reshape(-1)[0])
        f = np.asarray(group[FORCES][()], np.float64)
        if f.shape != (len(z), 3):
            raise ValueError(f"{FORCES} has shape {f.shape}, atNUM {len(z)} atoms")
    return z, x, e, f


def read_qm7x(path, kind: str = "opt", properties: bool = False, graphs=None, keys=None,
              drop_duplicates: bool = True) -> QM7XSet:
    """Read conformations from the QM7-X files at ``path`` (folder or one file).

    Args:
        kind: ``opt`` (equilibrium structures, for diffusion training), ``displaced`` (the -d
            structures) or ``all``.
        properties: also read energies and forces (``ePBE0+MBD``, ``totFOR``), for force fields;
            a conformation missing them is then an error.
        graphs: only these molecular graphs (m indices); None: all.
        keys: only these conformation ids; None: all (``kind`` and ``graphs`` still apply).
        drop_duplicates: drop every conformation of the conformers in ``DupMols.dat``.
    """
    if kind not in ("opt", "displaced", "all"):
        raise ValueError(f"kind must be opt, displaced or all, not {kind!r}")
    h5py = _h5py()
    dup = read_duplicates(path) if drop_duplicates else set()
    graphs = None if graphs is None else {int(g) for g in graphs}
    keys = None if keys is None else set(keys)
    pos, num, names, gr, disp, en, fo, rm, errors = [], [], [], [], [], [], [], [], []
    for file in qm7x_files(path):
        try:
            h5 = h5py.File(file, "r")
        except OSError as e:
            errors.append(f"{file}: cannot open: {e}")
            continue
        with h5:
            for mol_id in h5.keys():
                try:
                    conf_ids = list(h5[mol_id].keys())
                except Exception as e:  # a corrupted molecule group
                    errors.append(f"{file.name}:/{mol_id}: unreadable group: {type(e).__name__}: {e}")
                    continue
                for conf_id in conf_ids:
                    parsed = parse_conformation(conf_id)
                    if parsed is None:
                        errors.append(f"{file.name}:/{mol_id}/{conf_id}: not a QM7-X conformation id")
                        continue
                    m, _, _, d = parsed
                    if (kind == "opt" and d) or (kind == "displaced" and not d):
                        continue
                    if graphs is not None and m not in graphs:
                        continue
                    if keys is not None and conf_id not in keys:
                        continue
                    if conformer_key(conf_id) in dup:
                        continue
                    try:
                        g = h5[mol_id][conf_id]
                        z, x, e, f = _read_conformation(g, properties)
                        r = float(np.asarray(g[RMSD][()]).reshape(-1)[0]) if (d and RMSD in g) else (0.0 if not d else np.nan)
                    except Exception as e:  # a corrupted group or a missing dataset: name it, go on
                        errors.append(f"{file.name}:/{mol_id}/{conf_id}: {type(e).__name__}: {e}")
                        continue
                    pos.append(x - x.mean(0))
                    num.append(z)
                    names.append(conf_id)
                    gr.append(m)
                    disp.append(d)
                    en.append(np.nan if e is None else e)
                    fo.append(f)
                    rm.append(r)
    if pos:
        mols = Molecules.from_lists(pos, num)
    else:
        mols = Molecules(np.zeros((0, 3), np.float32), np.zeros(0, np.int16), np.zeros(1, np.int64), np.zeros(0, np.int64))
    forces = np.concatenate(fo).astype(np.float32) if properties and fo else None
    return QM7XSet(mols, np.asarray(names, dtype=str), np.asarray(gr, np.int64), np.asarray(disp, np.int64),
                   np.asarray(en, np.float64), forces, np.asarray(rm, np.float64), errors)


# ---------------------------------------------------------------------------- the paper's split
def split_graphs(graphs, seed: int = 0, n_train: int | None = None, n_val: int | None = None) -> dict:
    """The paper's split of molecular graphs (m indices): a seeded permutation of the distinct
    graphs, the first ``n_train`` (4500) train, the next ``n_val`` (1250) validation, the rest test.
    With fewer graphs than the release holds, the sizes shrink in the same proportions (at least
    one graph in each part)."""
    g = np.unique(np.asarray(graphs, np.int64))
    n = len(g)
    if n < 3:
        raise InputError(f"QM7-X split needs at least 3 molecular graphs, found {n}")
    if n_train is None or n_val is None:
        if n > N_TRAIN_GRAPHS + N_VAL_GRAPHS:
            n_train, n_val = N_TRAIN_GRAPHS, N_VAL_GRAPHS
        else:
            n_train = max(1, int(round(n * N_TRAIN_GRAPHS / N_GRAPHS_RELEASE)))
            n_val = max(1, int(round(n * N_VAL_GRAPHS / N_GRAPHS_RELEASE)))
            n_train = min(n_train, n - n_val - 1)
    if n_train + n_val >= n:
        raise InputError(f"QM7-X split: {n_train} train + {n_val} val graphs leave no test graph of {n}")
    perm = np.random.default_rng(seed).permutation(g)
    return {"by": "molecular graph (m index of Geom-m{r}-i{s}-c{t})", "seed": int(seed),
            "train": sorted(int(x) for x in perm[:n_train]),
            "val": sorted(int(x) for x in perm[n_train:n_train + n_val]),
            "test": sorted(int(x) for x in perm[n_train + n_val:])}


def load_split(path, split_file=None, seed: int = 0, graphs=None) -> dict:
    """The split of the data at ``path``: read from ``split_file`` if it exists, else made by
    :func:`split_graphs` (from ``graphs``, or the graphs of the equilibrium structures) and written
    to ``split_file`` (default ``$MORERED_CACHE/qm7x_split_<crc32 of the resolved path>_seed{seed}.json``,
    so that another copy or subset of QM7-X gets its own split) as JSON
    ``{"train": [m...], "val": [m...], "test": [m...], "seed": ..., "by": ...}``."""
    from morered.data.qm9 import cache_dir

    tag = zlib.crc32(str(Path(path).resolve()).encode())
    f = Path(split_file) if split_file else cache_dir() / f"qm7x_split_{tag:08x}_seed{seed}.json"
    if f.exists():
        s = json.loads(f.read_text())
        missing = [k for k in ("train", "val", "test") if k not in s]
        if missing:
            raise InputError(f"QM7-X split file {f} lacks {missing}")
        return s
    if graphs is None:
        graphs = read_qm7x(path, "opt").graph
    s = split_graphs(graphs, seed)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(s))
    return s


def training_data(path, split_file=None, seed: int = 0) -> tuple[Molecules, Molecules, list[str]]:
    """(train, val) equilibrium structures of the paper's graph split, and the read errors."""
    data = read_qm7x(path, "opt")
    if len(data) == 0:
        raise InputError(f"QM7-X: no equilibrium (-opt) structures read from {path}"
                         + (f"; first error: {data.errors[0]}" if data.errors else ""))
    s = load_split(path, split_file, seed, graphs=data.graph)
    train = np.flatnonzero(np.isin(data.graph, s["train"]))
    val = np.flatnonzero(np.isin(data.graph, s["val"]))
    return data.molecules.subset(train), data.molecules.subset(val), data.errors


def relaxation_set(path, split_file=None, seed: int = 0, n: int | None = None, part: str = "test") -> dict:
    """The paper's relaxation inputs: for each reference (-opt structure) of the ``part`` graphs,
    its displaced structures sorted by ``sRMSD`` and the closest, middle (index len // 2) and
    farthest taken.  ``n``: only the first ``n`` references of a ``seed`` permutation.

    Returns ``{"refs": {"keys", "numbers", "positions"}, "closest" | "middle" | "farthest":
    {"keys", "positions", "rmsd"} (None where the reference has no readable displaced structure),
    "errors": [...]}``; positions float64, centred; the same atom order as the reference.
    """
    s = load_split(path, split_file, seed)
    opt = read_qm7x(path, "opt", graphs=s[part])
    order = np.arange(len(opt))
    if n is not None:
        order = np.random.default_rng(seed).permutation(len(opt))[:n]
    ref_keys = {conformer_key(opt.keys[k]): k for k in order}
    disp = read_qm7x(path, "displaced", graphs={int(opt.graph[k]) for k in order})
    by_ref: dict[str, list[int]] = {}
    for k, key in enumerate(disp.keys):
        c = conformer_key(key)
        if c in ref_keys and np.isfinite(disp.rmsd[k]):
            by_ref.setdefault(c, []).append(k)
        elif c in ref_keys:
            disp.errors.append(f"{key}: no {RMSD}: not ranked")
    out = {"refs": {"keys": [], "numbers": [], "positions": []}, "errors": opt.errors + disp.errors}
    for kind in KINDS:
        out[kind] = {"keys": [], "positions": [], "rmsd": []}
    for c, k in ref_keys.items():
        x_ref, z = opt.molecules.molecule(k)
        out["refs"]["keys"].append(c)
        out["refs"]["numbers"].append(np.asarray(z, np.int64))
        out["refs"]["positions"].append(np.asarray(x_ref, np.float64))
        cand = sorted(by_ref.get(c, []), key=lambda i: (disp.rmsd[i], disp.displacement[i]))
        picks = dict(zip(KINDS, (cand[0], cand[len(cand) // 2], cand[-1]))) if cand else {}
        for kind in KINDS:
            i = picks.get(kind)
            if i is not None and not np.array_equal(disp.molecules.molecule(i)[1], z):
                out["errors"].append(f"{disp.keys[i]}: atoms differ from its reference")
                i = None
            out[kind]["keys"].append(None if i is None else str(disp.keys[i]))
            out[kind]["positions"].append(None if i is None else np.asarray(disp.molecules.molecule(i)[0], np.float64))
            out[kind]["rmsd"].append(np.nan if i is None else float(disp.rmsd[i]))
    return out
