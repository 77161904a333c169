"""QM9 from the ``qm9pack`` package's CSV files, offline, parsed once and cached as arrays.

``import qm9pack`` fails with recent setuptools (it imports ``pkg_resources``), so the data folder
is located with importlib without importing the package.  The cache folder is
``$MORERED_CACHE`` (default ``~/.cache/morered``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np

from morered.data.molecules import Molecules

SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
N_QM9 = 130_831  # molecules in qm9pack 1.0.3 (those that passed QM9's consistency check)
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Folder for cached arrays: ``$MORERED_CACHE`` or ``~/.cache/morered``."""
    d = Path(os.environ.get("MORERED_CACHE", Path.home() / ".cache" / "morered"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def qm9pack_csvs() -> list[Path]:
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("QM9 needs the 'qm9pack' package: pip install qm9pack")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(folder.glob("qm9_part*.csv"))
    if not files:
        raise FileNotFoundError(f"no qm9_part*.csv in {folder}")
    return files


# "0." (five rows) is not JSON: add the missing zero
_BARE_DOT = re.compile(r"(\d)\.(?=[,\]\s])")


def parse_qm9() -> Molecules:
    """Parse the qm9pack CSV files into :class:`Molecules` sorted by QM9 index."""
    csv.field_size_limit(1 << 24)
    positions, numbers, ids = [], [], []
    for path in qm9pack_csvs():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                xyz = np.asarray(json.loads(_BARE_DOT.sub(r"\1.0", row["XYZ_Ang"])), dtype=np.float64)
                elements = json.loads(row["Elements"].replace("'", '"'))
                z = np.array([SYMBOLS[e] for e in elements], dtype=np.int16)
                if xyz.shape != (len(z), 3) or len(z) != int(row["N_atoms"]):
                    raise ValueError(f"QM9 index {row['Index']}: inconsistent atom count")
                positions.append(xyz - xyz.mean(0))
                numbers.append(z)
                ids.append(int(row["Index"]))
    order = np.argsort(ids)
    return Molecules.from_lists([positions[k] for k in order], [numbers[k] for k in order], np.asarray(ids)[order])


def load_qm9(cache: bool = True) -> Molecules:
    """All of QM9 (centred positions), from the cache if present."""
    path = cache_dir() / f"qm9_v{_CACHE_VERSION}.npz"
    if cache and path.exists():
        return Molecules.load(path)
    mols = parse_qm9()
    if cache:
        tmp = path.with_suffix(".tmp.npz")
        mols.save(tmp)
        os.replace(tmp, path)
    return mols


def qm9_split() -> dict:
    """The fixed split shipped with the package (a copy of ``shared/data/qm9_split.json``)."""
    return json.loads(resources.files("morered.data").joinpath("qm9_split.json").read_text())


def split_ids(molecules: Molecules) -> dict[str, np.ndarray]:
    """ids of the train / val / test molecules: train = every molecule not in val or test."""
    s = qm9_split()
    val, test = np.asarray(s["val"], np.int64), np.asarray(s["test"], np.int64)
    held = np.concatenate([val, test])
    train = molecules.ids[~np.isin(molecules.ids, held)]
    return {"train": train, "val": val, "test": test}
