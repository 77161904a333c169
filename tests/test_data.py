"""Data: the QM9 arrays and fixed split, the cache, graphs, and a user's own structures."""

import csv
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

from morered import properties as P
from morered.data import qm9 as qm9_mod
from morered.data.batch import collate, full_graph, radius_graph
from morered.data.molecules import Molecules
from morered.data.structures import split_structures
from morered.training.train import load_own_structures

SHARED_SPLIT = Path(__file__).parents[2] / "shared/data/qm9_split.json"
PACKAGED_SPLIT = Path(qm9_mod.__file__).parent / "qm9_split.json"


# ------------------------------------------------------------------------------------ QM9
@pytest.mark.skipif(not SHARED_SPLIT.exists(), reason="../shared/data/qm9_split.json not present")
def test_packaged_split_is_the_shared_split():
    assert PACKAGED_SPLIT.read_bytes() == SHARED_SPLIT.read_bytes()
    assert json.loads(PACKAGED_SPLIT.read_text()) == json.loads(SHARED_SPLIT.read_text())
    assert qm9_mod.qm9_split() == json.loads(SHARED_SPLIT.read_text())


def test_qm9_size_and_sorted_ids(qm9):
    assert len(qm9) == qm9_mod.N_QM9 == 130_831
    assert np.all(np.diff(qm9.ids) > 0)  # sorted, unique
    assert qm9.offsets[-1] == len(qm9.positions) == len(qm9.numbers)
    n = qm9.n_atoms()
    assert n.min() >= 1 and n.max() == 29
    assert set(np.unique(qm9.numbers).tolist()) == {1, 6, 7, 8, 9}
    assert np.isfinite(qm9.positions).all()
    # positions are stored centred
    k = 12345
    x, _ = qm9.molecule(k)
    np.testing.assert_allclose(x.astype(np.float64).mean(0), 0.0, atol=1e-5)


def test_qm9_matches_the_raw_csv(qm9):
    """The cached arrays hold what the qm9pack CSV says (first rows of part 1), centred."""
    csv.field_size_limit(1 << 24)
    with open(qm9_mod.qm9pack_csvs()[0], newline="") as f:
        rows = [row for _, row in zip(range(5), csv.DictReader(f))]
    for row in rows:
        xyz = np.asarray(json.loads(qm9_mod._BARE_DOT.sub(r"\1.0", row["XYZ_Ang"])), dtype=np.float64)
        z = [qm9_mod.SYMBOLS[e] for e in json.loads(row["Elements"].replace("'", '"'))]
        mol = qm9.select_ids([int(row["Index"])])
        x, numbers = mol.molecule(0)
        assert numbers.tolist() == z
        np.testing.assert_allclose(x, xyz - xyz.mean(0), atol=1e-6)


def test_bare_dot_coordinates_parse():
    text = "[[0.,1.5,-2.],[3.25,0. ,4.0]]"
    fixed = qm9_mod._BARE_DOT.sub(r"\1.0", text)
    assert json.loads(fixed) == [[0.0, 1.5, -2.0], [3.25, 0.0, 4.0]]


def test_fixed_split(qm9):
    s = qm9_mod.split_ids(qm9)
    train, val, test = (set(s[k].tolist()) for k in ("train", "val", "test"))
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (110_831, 10_000, 10_000)
    assert len(train) == 110_831 and len(val) == 10_000 and len(test) == 10_000  # no duplicates
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(qm9.ids.tolist())


def test_select_ids_order_and_unknown(qm9):
    ids = [int(qm9.ids[10]), int(qm9.ids[3]), int(qm9.ids[7])]
    sel = qm9.select_ids(ids)
    assert sel.ids.tolist() == ids
    for k, i in enumerate([10, 3, 7]):
        np.testing.assert_array_equal(sel.molecule(k)[0], qm9.molecule(i)[0])
        np.testing.assert_array_equal(sel.molecule(k)[1], qm9.molecule(i)[1])
    with pytest.raises(KeyError):
        qm9.select_ids([10**9])


# ------------------------------------------------------------------------------------ cache
def test_cache_dir_honours_env(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "nested"
    monkeypatch.setenv("MORERED_CACHE", str(target))
    assert qm9_mod.cache_dir() == target
    assert target.is_dir()
    monkeypatch.delenv("MORERED_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert qm9_mod.cache_dir() == tmp_path / "home" / ".cache" / "morered"


def test_molecules_save_load_round_trip(tmp_path, test_molecules):
    path = tmp_path / "mols.npz"
    test_molecules.save(path)
    back = Molecules.load(path)
    for name in ("positions", "numbers", "offsets", "ids"):
        a, b = getattr(test_molecules, name), getattr(back, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_load_qm9_reads_the_cache_in_morered_cache(tmp_path, monkeypatch, test_molecules):
    """A cache file in $MORERED_CACHE is used as is (no parsing of the CSV files)."""
    monkeypatch.setenv("MORERED_CACHE", str(tmp_path))
    test_molecules.save(tmp_path / f"qm9_v{qm9_mod._CACHE_VERSION}.npz")

    def no_parse():
        raise AssertionError("parse_qm9 called although a cache exists")

    monkeypatch.setattr(qm9_mod, "parse_qm9", no_parse)
    mols = qm9_mod.load_qm9()
    assert len(mols) == len(test_molecules)
    np.testing.assert_array_equal(mols.ids, test_molecules.ids)


def test_load_qm9_writes_the_cache(tmp_path, monkeypatch, test_molecules):
    monkeypatch.setenv("MORERED_CACHE", str(tmp_path))
    monkeypatch.setattr(qm9_mod, "parse_qm9", lambda: test_molecules)
    qm9_mod.load_qm9()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"qm9_v{qm9_mod._CACHE_VERSION}.npz"]  # no temporary file left behind
    np.testing.assert_array_equal(Molecules.load(tmp_path / files[0]).positions, test_molecules.positions)


# ------------------------------------------------------------------------------------ batches and graphs
def _idx(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


@pytest.mark.parametrize("sizes", [[3, 1, 5, 2], [29], [2, 2, 2]])
def test_full_graph(sizes):
    idx_m = _idx(sizes)
    e = full_graph(idx_m)
    assert e.shape == (2, sum(n * (n - 1) for n in sizes))
    i, j = e.tolist()
    assert all(a != b for a, b in zip(i, j))
    assert all(idx_m[a] == idx_m[b] for a, b in zip(i, j))  # nothing across molecules
    pairs = set(zip(i, j))
    assert len(pairs) == e.shape[1]  # no duplicates
    expected = {(a, b) for a in range(len(idx_m)) for b in range(len(idx_m)) if a != b and idx_m[a] == idx_m[b]}
    assert pairs == expected


def test_radius_graph_is_the_close_subset_of_the_full_graph():
    g = torch.Generator().manual_seed(0)
    sizes = [6, 4, 7]
    idx_m = _idx(sizes)
    x = torch.randn(sum(sizes), 3, generator=g, dtype=torch.float64) * 1.5
    full = set(map(tuple, full_graph(idx_m).T.tolist()))
    e = radius_graph(x, idx_m, cutoff=2.0)
    pairs = set(map(tuple, e.T.tolist()))
    assert pairs <= full
    expected = {(a, b) for a, b in full if float((x[a] - x[b]).norm()) < 2.0}
    assert pairs == expected
    assert 0 < len(pairs) < len(full)  # the cutoff actually removed and kept pairs


def test_collate_centres_and_indexes(test_molecules):
    b = test_molecules.batch([2, 0, 5])
    n = [len(test_molecules.molecule(k)[1]) for k in (2, 0, 5)]
    assert b[P.n_atoms].tolist() == n
    assert b[P.idx_m].tolist() == sum(([m] * k for m, k in enumerate(n)), [])
    assert b[P.R].dtype == torch.float32
    for m in range(3):
        assert b[P.R][b[P.idx_m] == m].double().mean(0).abs().max() < 1e-5
    assert b[P.mol_id].tolist() == test_molecules.ids[[2, 0, 5]].tolist()
    shifted = collate([test_molecules.molecule(0)[0] + 10.0], [test_molecules.molecule(0)[1]])
    torch.testing.assert_close(shifted[P.R], test_molecules.batch([0])[P.R], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ own data
def _write_own(path, test_molecules, n=10, extra=()):
    frames = []
    for k in range(n):
        x, z = test_molecules.molecule(k % len(test_molecules))
        frames.append(Atoms(numbers=z, positions=x.astype(np.float64) + 3.0 * k, info={"name": f"m{k}"}))
    frames.extend(extra)
    ase.io.write(path, frames, format="extxyz")
    return frames


def test_seeded_split_is_deterministic_and_disjoint(tmp_path, test_molecules):
    path = tmp_path / "own.extxyz"
    _write_own(path, test_molecules, n=40)
    mols = load_own_structures(path)[0]
    a = split_structures(mols, None, 0.1, 0.2, seed=3)
    b = split_structures(mols, None, 0.1, 0.2, seed=3)
    c = split_structures(mols, None, 0.1, 0.2, seed=4)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(a[k], b[k])
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (28, 4, 8)
    assert any(not np.array_equal(a[k], c[k]) for k in ("val", "test"))
    parts = [set(a[k].tolist()) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(range(40)) and sum(map(len, parts)) == 40


def test_split_file(tmp_path, test_molecules):
    path = tmp_path / "own.extxyz"
    _write_own(path, test_molecules, n=12)
    mols = load_own_structures(path)[0]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": [5, 1], "test": [11]}))
    s = split_structures(mols, split, 0.5, 0.5, seed=0)  # fractions ignored with a file
    assert s["val"].tolist() == [1, 5] and s["test"].tolist() == [11]
    assert s["train"].tolist() == [0, 2, 3, 4, 6, 7, 8, 9, 10]
    split.write_text(json.dumps({"val": [12], "test": []}))
    with pytest.raises(ValueError, match="out of range"):
        split_structures(mols, split, 0.1, 0.1, seed=0)
