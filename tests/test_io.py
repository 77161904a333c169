"""Structure input/output: round trips per format, bad records, validation, errors, trajectories."""

import csv

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import AllChem

from morered.io import (
    Record,
    StructureReadError,
    atoms_from_mol,
    errors_path,
    mol_with_positions,
    read_structures,
    validate,
    write_errors,
    write_structures,
    write_trajectory,
)

WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]])
METHANE = np.array(
    [[0.0, 0.0, 0.0], [0.629, 0.629, 0.629], [-0.629, -0.629, 0.629],
     [-0.629, 0.629, -0.629], [0.629, -0.629, -0.629]]
)
QM9_ELEMENTS = {1, 6, 7, 8, 9}


def _frames():
    water = Atoms("OH2", positions=WATER, info={"name": "water", "energy_dft": -76.4, "tag": "a b"})
    methane = Atoms("CH4", positions=METHANE, info={"name": "methane", "energy_dft": -40.5})
    return [water, methane]


def _results(records, shift=0.1, failed=()):
    """Shifted positions plus the fields a relaxation would add; None for indices in failed."""
    return [
        {
            "positions": None if k in failed else r.atoms.positions + shift,
            "morered_steps": np.int64(7 + k),
            "morered_converged": np.bool_(k % 2 == 0),
            "morered_t0": 42,
            "morered_t_final": np.float32(0.5),
        }
        for k, r in enumerate(records)
    ]


def _ethanol(name="ethanol"):
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    mol.SetProp("_Name", name)
    mol.SetProp("cid", "00702")
    mol.SetProp("energy_dft", "-154.9")
    return mol


def _write_sdf(path, mols):
    writer = Chem.SDWriter(str(path))
    for mol in mols:
        writer.write(mol)
    writer.close()


def _bonds(mol):
    return sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondTypeAsDouble())
                  for b in mol.GetBonds())


@pytest.mark.parametrize("ext", ["xyz", "extxyz"])
def test_xyz_round_trip_keeps_info_and_replaces_positions(tmp_path, ext):
    src = tmp_path / f"in.{ext}"
    ase.io.write(src, _frames(), format="extxyz")
    records = read_structures(src)
    assert [(r.name, r.index) for r in records] == [("water", 0), ("methane", 1)]
    assert records[0].atoms.info["energy_dft"] == pytest.approx(-76.4)
    assert records[0].mol is None and records[0].error is None

    out = tmp_path / f"out.{ext}"
    assert write_structures(out, records, _results(records)) == []
    back = read_structures(out)
    assert [r.name for r in back] == ["water", "methane"]
    np.testing.assert_allclose(back[1].atoms.positions, METHANE + 0.1, atol=1e-6)
    info = back[0].atoms.info
    assert info["energy_dft"] == pytest.approx(-76.4) and info["tag"] == "a b"
    assert info["morered_steps"] == 7 and info["morered_converged"] is True
    assert info["morered_t_final"] == pytest.approx(0.5)
    assert back[1].atoms.info["morered_converged"] is False


def test_plain_xyz_and_index_selection(tmp_path):
    src = tmp_path / "plain.xyz"
    block = "3\nsome comment\n" + "".join(
        f"{s} {x:.3f} {y:.3f} {z:.3f}\n" for s, (x, y, z) in zip("OHH", WATER))
    src.write_text(block * 3)
    records = read_structures(src)
    assert [r.name for r in records] == ["plain.xyz:0", "plain.xyz:1", "plain.xyz:2"]
    assert [r.index for r in read_structures(src, "1:")] == [1, 2]
    last = read_structures(src, -1)
    assert len(last) == 1 and last[0].index == 2
    with pytest.raises(StructureReadError, match="out of range"):
        read_structures(src, 3)


def test_duplicate_names_made_unique(tmp_path):
    frames = _frames()
    frames[1].info["name"] = "water"
    ase.io.write(tmp_path / "dup.xyz", frames)
    assert [r.name for r in read_structures(tmp_path / "dup.xyz")] == ["water:0", "water:1"]


def test_output_keeps_the_input_names_not_the_unique_ones(tmp_path):
    """Duplicate names are made unique for error reports only; the written file keeps them."""
    frames = _frames() + [Atoms("OH2", positions=WATER)]  # the third has no name
    frames[1].info["name"] = "water"
    ase.io.write(tmp_path / "dup.extxyz", frames)
    records = read_structures(tmp_path / "dup.extxyz")
    assert [r.name for r in records] == ["water:0", "water:1", "dup.extxyz:2"]
    for ext in ("extxyz", "db"):
        write_structures(tmp_path / f"out.{ext}", records, _results(records))
        back = [r.atoms.info for r in read_structures(tmp_path / f"out.{ext}")]
        assert [info.get("name") for info in back] == ["water", "water", None], ext

    src = tmp_path / "dup.sdf"
    _write_sdf(src, [_ethanol("aspirin"), _ethanol("aspirin"), _ethanol("")])
    records = read_structures(src)
    assert [r.name for r in records] == ["aspirin:0", "aspirin:1", "dup.sdf:2"]
    write_structures(tmp_path / "out.sdf", records, _results(records))
    titles = [m.GetProp("_Name") for m in Chem.SDMolSupplier(str(tmp_path / "out.sdf"), sanitize=False)]
    assert titles == ["aspirin", "aspirin", ""]
    # SDF written from xyz: the title is info["name"], empty without one
    xyz_records = read_structures(tmp_path / "dup.extxyz")
    write_structures(tmp_path / "from_xyz.sdf", xyz_records, _results(xyz_records))
    back = Chem.SDMolSupplier(str(tmp_path / "from_xyz.sdf"), removeHs=False, sanitize=False)
    assert [m.GetProp("_Name") for m in back] == ["water", "water", ""]


def test_db_round_trip_keeps_key_value_pairs(tmp_path):
    src = tmp_path / "in.db"
    with ase.db.connect(src) as db:
        for atoms in _frames():
            db.write(Atoms(atoms.numbers, atoms.positions),
                     key_value_pairs={"name": atoms.info["name"], "source": "test", "n_conf": 3})
    records = read_structures(src)
    assert [r.name for r in records] == ["water", "methane"]
    assert records[0].atoms.info["source"] == "test"

    records[0].atoms.info.update(energy=-1.0, **{"bad key": 2})  # not valid db keys
    out = tmp_path / "out.db"
    write_structures(out, records, _results(records))
    rows = list(ase.db.connect(out).select())
    assert len(rows) == 2
    kvp = rows[0].key_value_pairs
    assert kvp["name"] == "water" and kvp["source"] == "test" and kvp["n_conf"] == 3
    assert kvp["morered_steps"] == 7 and kvp["morered_converged"] is True
    assert rows[0].data["energy"] == -1.0 and rows[0].data["bad key"] == 2
    np.testing.assert_allclose(rows[0].positions, WATER + 0.1)

    write_structures(out, records[:1], _results(records[:1]))  # replaces, never appends
    assert len(list(ase.db.connect(out).select())) == 1


def test_sdf_round_trip_keeps_bonds_and_properties(tmp_path):
    src = tmp_path / "in.sdf"
    mols = [_ethanol(), _ethanol("ethanol-2")]
    _write_sdf(src, mols)
    records = read_structures(src)
    assert [r.name for r in records] == ["ethanol", "ethanol-2"]
    assert records[0].mol is not None
    (tmp_path / "in.sd").write_text(src.read_text())  # .sd is SDF too
    assert [r.name for r in read_structures(tmp_path / "in.sd")] == ["ethanol", "ethanol-2"]
    assert records[0].atoms.info["cid"] == "00702"  # identifiers with leading zeros stay text
    assert records[0].atoms.info["energy_dft"] == pytest.approx(-154.9)

    out = tmp_path / "out.sdf"
    results = _results(records, shift=0.25)
    write_structures(out, records, results)
    back = list(Chem.SDMolSupplier(str(out), removeHs=False, sanitize=False))
    assert len(back) == 2
    assert _bonds(back[0]) == _bonds(mols[0])
    assert back[0].GetProp("cid") == "00702" and back[0].GetProp("_Name") == "ethanol"
    assert back[0].GetProp("morered_steps") == "7"
    assert back[0].GetProp("morered_converged") == "True"
    np.testing.assert_allclose(back[1].GetConformer().GetPositions(),
                               mols[1].GetConformer().GetPositions() + 0.25, atol=1e-3)


def test_sdf_written_from_xyz_gets_bonds(tmp_path):
    ase.io.write(tmp_path / "in.xyz", _frames())
    records = read_structures(tmp_path / "in.xyz")
    write_structures(tmp_path / "out.sdf", records, _results(records, shift=0.0))
    back = list(Chem.SDMolSupplier(str(tmp_path / "out.sdf"), removeHs=False))
    assert [m.GetProp("_Name") for m in back] == ["water", "methane"]
    assert [m.GetNumBonds() for m in back] == [2, 4]
    assert back[1].GetNumAtoms() == 5  # no implicit hydrogens added
    assert float(back[0].GetProp("energy_dft")) == pytest.approx(-76.4)


def test_bad_sdf_record_becomes_error_record(tmp_path):
    good = Chem.MolToMolBlock(_ethanol()) + "$$$$\n"
    bad = "broken\n  test\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\n    0.0 0.0 C\nM  END\n$$$$\n"
    src = tmp_path / "mixed.sdf"
    src.write_text(good + bad + good.replace("ethanol", "other"))
    records = read_structures(src)
    assert [r.index for r in records] == [0, 1, 2]
    assert records[1].atoms is None and records[1].name == "broken"
    assert "RDKit" in records[1].error
    assert records[0].error is None and records[2].name == "other"
    assert len(records[2].atoms) == 9


def test_sdf_without_explicit_hydrogens_is_an_error_record(tmp_path):
    heavy = Chem.RemoveHs(_ethanol("skeleton"))  # C, C, O with implicit hydrogens
    radical = Chem.AddHs(Chem.MolFromSmiles("[CH2]O"))  # a radical: no hydrogen to add
    AllChem.EmbedMolecule(radical, randomSeed=1)
    radical.SetProp("_Name", "radical")
    src = tmp_path / "mixed.sdf"
    _write_sdf(src, [_ethanol(), heavy, radical])
    records = read_structures(src)
    assert [r.error is None for r in records] == [True, False, True]
    assert records[1].name == "skeleton" and records[1].atoms is None
    assert records[1].error.startswith("6 implicit hydrogens: add explicit hydrogens")
    assert len(records[2].atoms) == 5

    # only skeletons: nothing to relax, and the reason names the problem
    _write_sdf(tmp_path / "heavy.sdf", [heavy])
    with pytest.raises(StructureReadError, match="implicit hydrogens"):
        read_structures(tmp_path / "heavy.sdf")

    # without bonds RDKit cannot know valences: all-atom structures are not flagged
    no_bonds = Chem.RWMol(_ethanol("no bonds"))
    for b in list(no_bonds.GetBonds()):
        no_bonds.RemoveBond(b.GetBeginAtomIdx(), b.GetEndAtomIdx())
    for a in no_bonds.GetAtoms():
        a.SetNoImplicit(False)
    _write_sdf(tmp_path / "no_bonds.sdf", [no_bonds])
    (rec,) = read_structures(tmp_path / "no_bonds.sdf")
    assert rec.error is None and len(rec.atoms) == 9


def test_failed_records_go_to_the_errors_file(tmp_path):
    ase.io.write(tmp_path / "in.xyz", _frames())
    records = read_structures(tmp_path / "in.xyz")
    results = _results(records, failed={0})
    results[0]["error"] = "did not converge, NaN"
    out = tmp_path / "relaxed.xyz"
    failed = write_structures(out, records, results)
    assert [r.name for r in read_structures(out)] == ["methane"]
    assert [(r.index, r.error) for r in failed] == [(0, "did not converge, NaN")]

    assert errors_path(out) == tmp_path / "relaxed.errors.csv"
    extra = Record("x.xyz:5", 5, None, error="1 atom(s); at least 2 are needed")
    write_errors(errors_path(out), failed + [extra])
    with open(errors_path(out), newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["index", "name", "reason"], ["0", "water", "did not converge, NaN"],
                    ["5", "x.xyz:5", "1 atom(s); at least 2 are needed"]]


@pytest.mark.parametrize(
    "atoms, expected",
    [
        (Atoms("CBr", positions=[[0, 0, 0], [1.9, 0, 0]]), "not trained on: Br"),
        (Atoms("C", positions=[[0, 0, 0]]), "at least 2"),
        (Atoms("OH2", positions=np.where(np.arange(9).reshape(3, 3) == 4, np.nan, WATER)),
         "non-finite"),
        (Atoms("OH2", positions=[WATER[0], WATER[1], WATER[1] + [0, 0, 0.1]]),
         "1 (H) and 2 (H) are 0.100 Å apart"),
        (Atoms("CH4", positions=METHANE), "at most 4"),
    ],
    ids=["unknown-element", "one-atom", "nan", "overlap", "too-many-atoms"],
)
def test_validate_catches_bad_structures(atoms, expected):
    reason = validate(atoms, elements=QM9_ELEMENTS, max_atoms=4)
    assert reason is not None and expected in reason


def test_validate_passes_a_good_molecule():
    assert validate(Atoms("CH4", positions=METHANE), elements=QM9_ELEMENTS, max_atoms=29) is None
    periodic = Atoms("CH4", positions=METHANE, cell=[10, 10, 10], pbc=True)
    assert validate(periodic, elements=QM9_ELEMENTS, max_atoms=29) is None


@pytest.mark.parametrize(
    "name, content",
    [("missing.xyz", None), ("garbage.xyz", "hello\nworld\n"), ("garbage.db", "not sqlite"),
     ("garbage.sdf", "hello\n"), ("data.unknownext", "1 2 3\n"), ("empty.xyz", "")],
)
def test_unreadable_file_raises_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(StructureReadError, match=name):
        read_structures(path)
    assert content is not None or not path.exists()  # a missing .db is not created


def test_missing_db_is_not_created(tmp_path):
    with pytest.raises(StructureReadError):
        read_structures(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_rdkit_helpers():
    mol = _ethanol()
    atoms = atoms_from_mol(mol)
    assert atoms.get_chemical_formula() == "C2H6O" and atoms.info["name"] == "ethanol"
    moved = mol_with_positions(mol, atoms.positions + 1.0)
    assert moved.GetNumConformers() == 1 and _bonds(moved) == _bonds(mol)
    np.testing.assert_allclose(moved.GetConformer().GetPositions(), atoms.positions + 1.0)
    np.testing.assert_allclose(mol.GetConformer().GetPositions(), atoms.positions)  # a copy
    with pytest.raises(ValueError):
        mol_with_positions(mol, atoms.positions[:3])


def test_trajectory_readable_with_t_hat(tmp_path):
    steps = [METHANE + 0.01 * k for k in range(4)]
    path = tmp_path / "traj.extxyz"
    write_trajectory(path, np.array([6, 1, 1, 1, 1]), steps, [30, 20, np.int64(10), 0], "methane")
    frames = ase.io.read(path, ":")
    assert len(frames) == 4
    assert [f.info["t_hat"] for f in frames] == [30, 20, 10, 0]
    assert [f.info["step"] for f in frames] == [0, 1, 2, 3]
    assert frames[0].info["name"] == "methane"
    np.testing.assert_allclose(frames[3].positions, steps[3])


def test_overlap_threshold_default_is_0_3_angstrom():
    """Diffused inputs can bring a C-H pair to ~0.45 Å: still relaxable; 0.2 Å is broken."""
    from morered.io import MIN_DISTANCE, validate

    assert MIN_DISTANCE == 0.3
    for d, ok in ((0.45, True), (0.31, True), (0.2, False)):
        a = Atoms("CH", positions=[[0, 0, 0], [d, 0, 0]])
        reason = validate(a, elements={1, 6}, max_atoms=10)
        assert (reason is None) == ok, (d, reason)
