"""The QM7-X reader, split and hooks, on small synthetic files in the official layout (SPEC §12):
``f[mol_id]["Geom-m{r}-i{s}-c{t}-opt" | "...-d{k}"]`` with atNUM, atXYZ, ePBE0+MBD, totFOR, sRMSD,
plus a DupMols.dat, a corrupted group, a missing dataset and an unreadable file."""

import json
import sys

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from morered.data import qm7x as Q  # noqa: E402
from morered.errors import InputError  # noqa: E402

N_DISP = 5
#: (graph m, isomer i, conformer c) of each conformer; graphs 1-4 in 1000.hdf5, 5-8 in 2000.hdf5
CONFORMERS = [(m, 1, c) for m in range(1, 9) for c in (1, 2)] + [(3, 2, 1)]
DUPLICATE = "Geom-m2-i1-c2"
#: conformations written broken: a dangling link (corrupted group), a missing dataset
CORRUPTED, NO_XYZ, NO_FORCES = "Geom-m4-i1-c1-d2", "Geom-m6-i1-c1-opt", "Geom-m7-i1-c2-opt"


def _molecule(m):
    """Atoms of graph m: a chain of 2 + m % 3 heavy atoms with hydrogens."""
    z = np.array([6, 8, 7][: 2 + m % 2] + [1] * (2 + m % 3))
    x = np.random.default_rng(m).normal(scale=1.2, size=(len(z), 3))
    return z, x


def _rmsd_order(m, c):
    """sRMSD of the displaced structures: a fixed shuffle of 0.1 .. 0.5 Å."""
    return np.random.default_rng(100 * m + c).permutation(np.linspace(0.1, 0.5, N_DISP))


def _write_conf(g, z, x, energy, srmsd=None, skip=()):
    if "atNUM" not in skip:
        g["atNUM"] = z.astype(np.int64)
    if "atXYZ" not in skip:
        g["atXYZ"] = x
    g["ePBE0+MBD"] = np.array([energy])
    if "totFOR" not in skip:
        g["totFOR"] = -0.1 * x
    for name in ("pbe0FOR", "vdwFOR"):
        g[name] = np.zeros_like(x)
    for name in ("eAT", "ePBE0", "eMBD", "eDFTB+MBD"):
        g[name] = np.array([energy])
    if srmsd is not None:
        g["sRMSD"] = np.array([srmsd])


@pytest.fixture(scope="module")
def qm7x_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("qm7x")
    files = {1: h5py.File(root / "1000.hdf5", "w"), 2: h5py.File(root / "2000.hdf5", "w")}
    for m, i, c in CONFORMERS:
        f = files[1 if m <= 4 else 2]
        mol = f.require_group(str(m))
        z, x0 = _molecule(m)
        x0 = x0 + 0.05 * c + 0.01 * i
        key = f"Geom-m{m}-i{i}-c{c}"
        skip = {"atXYZ"} if key + "-opt" == NO_XYZ else {"totFOR"} if key + "-opt" == NO_FORCES else ()
        _write_conf(mol.create_group(key + "-opt"), z, x0, -100.0 * m - c, skip=skip)
        for d, r in enumerate(_rmsd_order(m, c), start=1):
            name = f"{key}-d{d}"
            if name == CORRUPTED:
                mol[name] = h5py.SoftLink("/nowhere/at/all")  # listed, but cannot be opened
                continue
            x = x0 + r * np.random.default_rng(d).normal(size=x0.shape) / np.sqrt(3)
            _write_conf(mol.create_group(name), z, x, -100.0 * m - c + r, srmsd=r)
    for f in files.values():
        f.close()
    (root / "3000.hdf5").write_bytes(b"this is not an HDF5 file")
    (root / "DupMols.dat").write_text(DUPLICATE + "-opt\n")
    return root


def test_equilibrium_structures_duplicates_and_errors(qm7x_dir):
    data = Q.read_qm7x(qm7x_dir, "opt")
    expected = {f"Geom-m{m}-i{i}-c{c}-opt" for m, i, c in CONFORMERS} - {DUPLICATE + "-opt", NO_XYZ}
    assert set(data.keys) == expected and len(data) == len(expected)
    assert (data.displacement == 0).all()
    k = list(data.keys).index("Geom-m3-i2-c1-opt")
    x, z = data.molecules.molecule(k)
    z_ref, x_ref = _molecule(3)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_allclose(x, x_ref - x_ref.mean(0), atol=1e-6)  # centred, as read
    assert data.graph[k] == 3
    # the broken groups are named, the rest was read
    assert any(NO_XYZ in e and "atXYZ" in e for e in data.errors)
    assert any("3000.hdf5" in e and "cannot open" in e for e in data.errors)
    # the duplicate conformer's displaced structures are dropped as well
    disp = Q.read_qm7x(qm7x_dir, "displaced")
    assert not any(key.startswith(DUPLICATE + "-") for key in disp.keys)
    assert any(CORRUPTED in e for e in disp.errors) and CORRUPTED not in set(disp.keys)
    assert len(disp) == (len(CONFORMERS) - 1) * N_DISP - 1
    kept = Q.read_qm7x(qm7x_dir, "opt", drop_duplicates=False)
    assert DUPLICATE + "-opt" in set(kept.keys)


def test_energies_and_forces(qm7x_dir):
    data = Q.read_qm7x(qm7x_dir, "all", properties=True, graphs=[5, 7])
    assert set(data.graph) == {5, 7}
    k = list(data.keys).index("Geom-m5-i1-c2-opt")
    assert data.energy[k] == -502.0
    a, b = data.molecules.offsets[k], data.molecules.offsets[k + 1]
    _, x = _molecule(5)
    np.testing.assert_allclose(data.forces[a:b], -0.1 * (x + 0.05 * 2 + 0.01), rtol=1e-6)
    assert data.forces.shape == data.molecules.positions.shape
    # with properties, a conformation without totFOR is an error naming the dataset; without, it is read
    assert NO_FORCES not in set(data.keys) and any(NO_FORCES in e and "totFOR" in e for e in data.errors)
    assert NO_FORCES in set(Q.read_qm7x(qm7x_dir, "opt", graphs=[7]).keys)


def test_missing_h5py_names_the_extra(qm7x_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(InputError, match=r"morered\[qm7x\]"):
        Q.read_qm7x(qm7x_dir)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="neither"):
        Q.read_qm7x(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no \\*.hdf5"):
        Q.read_qm7x(tmp_path)


def test_split_by_graph_paper_sizes_and_seed():
    graphs = np.repeat(np.arange(1, 6951), 3)  # the release's 6950 graphs, several conformers each
    s = Q.split_graphs(graphs, seed=0)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (4500, 1250, 1200)
    assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(range(1, 6951))
    assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])
    assert Q.split_graphs(graphs, seed=0) == s and Q.split_graphs(graphs, seed=1)["test"] != s["test"]
    small = Q.split_graphs(np.arange(20), seed=0)  # proportional, at least one graph each
    assert (len(small["train"]), len(small["val"]), len(small["test"])) == (13, 4, 3)


def test_split_file_written_and_reused(qm7x_dir, tmp_path):
    f = tmp_path / "split.json"
    s = Q.load_split(qm7x_dir, f, seed=3)
    on_disk = json.loads(f.read_text())
    assert on_disk["train"] == s["train"] and on_disk["seed"] == 3
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(1, 9))
    f.write_text(json.dumps({"train": [1, 2, 3, 4, 5, 6], "val": [7], "test": [8]}))
    assert Q.load_split(qm7x_dir, f)["test"] == [8]  # an existing file wins
    train, val, errors = Q.training_data(qm7x_dir, f)
    assert len(val) == 2 and len(train) == 2 * 6 - 2 + 1  # minus duplicate and NO_XYZ, plus m3-i2
    assert errors


def test_relaxation_inputs_closest_middle_farthest(qm7x_dir, tmp_path):
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": [1, 2, 3], "val": [5], "test": [4, 8]}))
    s = Q.relaxation_set(qm7x_dir, f)
    assert sorted(s["refs"]["keys"]) == ["Geom-m4-i1-c1", "Geom-m4-i1-c2", "Geom-m8-i1-c1", "Geom-m8-i1-c2"]
    for k, ref in enumerate(s["refs"]["keys"]):
        m, c = int(ref.split("-m")[1].split("-")[0]), int(ref[-1])
        r = np.sort(_rmsd_order(m, c))
        if ref + "-d2" == CORRUPTED:  # the unreadable one is not ranked
            r = np.sort(np.delete(_rmsd_order(m, c), 1))
        assert [s[kind]["rmsd"][k] for kind in Q.KINDS] == pytest.approx([r[0], r[len(r) // 2], r[-1]])
        assert s["closest"]["keys"][k].startswith(ref + "-d")
        x = s["farthest"]["positions"][k]
        assert x.shape == s["refs"]["positions"][k].shape and abs(x.mean(0)).max() < 1e-6
    assert any(CORRUPTED in e for e in s["errors"])


def test_train_and_benchmark_commands(qm7x_dir, tmp_path, monkeypatch):
    from morered.cli.main import main
    from morered.evaluation.benchmark import run_relax_benchmark

    monkeypatch.setenv("MORERED_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "qm7x", "--data-dir", str(qm7x_dir), "--out", str(out), "--max-steps", "2",
               "--batch-size", "4", "--accelerator", "cpu", "--threads", "1",
               "--set", "model.representation={n_features: 8, n_interactions: 1, n_rbf: 4}",
               "--set", "trainer.val_every_steps=1"])
    assert rc in (0, None)
    info = json.loads((out / "summary.json").read_text())["dataset"]
    assert info["name"] == "qm7x" and info["n_train"] > 0 and info["n_val"] > 0
    (split_file,) = (tmp_path / "cache").glob("qm7x_split_*_seed0.json")
    split = json.loads(split_file.read_text())
    res = run_relax_benchmark(n=None, out=tmp_path / "bench", methods=("identity",), dataset="qm7x",
                              data_dir=qm7x_dir, progress=False)
    kinds = {r["kind"] for r in res["rows"]}
    assert kinds == {"qm7x_closest", "qm7x_middle", "qm7x_farthest"}
    n_refs = sum(1 for m, i, c in CONFORMERS if m in split["test"] and f"Geom-m{m}-i{i}-c{c}" != DUPLICATE
                 and f"Geom-m{m}-i{i}-c{c}-opt" != NO_XYZ)
    assert len(res["rows"]) == 3 * n_refs
    for r in res["rows"]:  # identity: the input's own RMSD to its reference, ranked as chosen
        assert r["ratio"] == pytest.approx(1.0) and r["rmsd_in"] > 0.05
