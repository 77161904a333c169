"""Property-based fuzzing of the structure readers and the validator: random and corrupted
xyz/extxyz/SDF text never raises past the reader (only StructureReadError for a file with
nothing readable), never loses a structure and keeps the order."""

import io

import ase.io
import numpy as np
import pytest
from ase import Atoms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morered.io import StructureReadError, read_structures, validate

SYMBOLS = ["H", "C", "N", "O", "F"]
CORRUPTIONS = ["none", "coordinate", "symbol", "count_high", "count_low", "short_line", "blank_comment"]


def _frame_lines(k, symbols, coords):
    a = Atoms(symbols=symbols, positions=coords, info={"name": f"f{k}"})
    buf = io.StringIO()
    ase.io.write(buf, a, format="extxyz")
    return buf.getvalue().splitlines()


def _corrupt(lines, how):
    if how == "coordinate":
        parts = lines[2].split()
        parts[2] = "1.2.3"
        return lines[:2] + [" ".join(parts)] + lines[3:]
    if how == "symbol":
        return lines[:2] + ["Qq " + " ".join(lines[2].split()[1:])] + lines[3:]
    if how == "count_high":
        return [str(int(lines[0]) + 3)] + lines[1:]
    if how == "count_low":
        return [str(int(lines[0]) - 1)] + lines[1:]
    if how == "short_line":
        return lines[:2] + [lines[2].split()[0] + " 0.0"] + lines[3:]
    if how == "blank_comment":
        return lines[:1] + [""] + lines[2:]
    return lines


coord = st.floats(-20, 20, allow_nan=False, allow_infinity=False, width=32)
frame = st.tuples(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=6), st.sampled_from(CORRUPTIONS),
                  st.randoms(use_true_random=False))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(frame, min_size=1, max_size=6))
def test_corrupted_xyz_keeps_every_frame_in_order(tmp_path, frames):
    lines, expect = [], []
    for k, (symbols, how, rnd) in enumerate(frames):
        coords = np.array([[rnd.uniform(-5, 5) for _ in range(3)] for _ in symbols])
        lines += _corrupt(_frame_lines(k, symbols, coords), how)
        expect.append((f"f{k}", how in ("none", "blank_comment"), coords))
    path = tmp_path / "fuzz.xyz"
    path.write_text("\n".join(lines) + "\n")
    try:
        records = read_structures(path)
    except StructureReadError:
        assert not any(ok for _, ok, _ in expect)  # only a file with nothing readable
        return
    assert len(records) == len(frames)
    for k, (r, (name, ok, coords)) in enumerate(zip(records, expect)):
        assert (r.error is None) == ok, (k, r.error)
        if ok:
            np.testing.assert_allclose(r.atoms.positions, coords, atol=1e-6)
            if frames[k][1] == "none":
                assert r.name == name
            validate(r.atoms, elements={1, 6, 7, 8}, max_atoms=29, max_extent=24.0, max_gap=5.0)
        else:
            assert f"frame {k}" in r.error and "\n" not in r.error


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 .-eHCOXx\n\t\r")), max_size=300))
def test_random_text_never_raises_past_the_reader(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fz") / "random.xyz"
    path.write_text(text)
    try:
        records = read_structures(path)
    except StructureReadError:
        return
    for r in records:
        assert (r.atoms is None) == (r.error is not None)
        if r.atoms is not None:
            validate(r.atoms, elements={1, 6, 8}, max_atoms=29, max_extent=24.0, max_gap=5.0)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 6), data=st.data())
def test_validate_never_raises(n, data):
    values = st.floats(allow_nan=True, allow_infinity=True, width=64)
    pos = np.array(data.draw(st.lists(st.tuples(values, values, values), min_size=n, max_size=n)) or
                   np.zeros((0, 3)), dtype=np.float64).reshape(-1, 3)
    numbers = data.draw(st.lists(st.integers(0, 118), min_size=n, max_size=n))
    reason = validate(Atoms(numbers=numbers, positions=pos), elements={1, 6, 7, 8, 9}, max_atoms=29,
                      max_extent=24.0, max_gap=5.0)
    assert reason is None or isinstance(reason, str)


SDF_CORRUPTIONS = ["none", "atom_line", "count_line", "truncate"]


@pytest.mark.parametrize("seed", range(3))
def test_corrupted_sdf_keeps_every_record_in_order(tmp_path, seed):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    rng = np.random.default_rng(seed)
    blocks, ok = [], []
    for k, smi in enumerate(["CC", "CO", "C=O", "CN", "OO"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=1)
        mol.SetProp("_Name", f"m{k}")
        block = Chem.MolToMolBlock(mol)
        how = SDF_CORRUPTIONS[rng.integers(len(SDF_CORRUPTIONS))]
        lines = block.splitlines()
        if how == "atom_line":
            lines[4] = "   garbage"
        elif how == "count_line":
            lines[3] = " 99 99  0  0  0  0  0  0  0  0999 V2000"
        elif how == "truncate":
            lines = lines[:5]
        blocks.append("\n".join(lines) + "\n$$$$\n")
        ok.append(how == "none")
    path = tmp_path / "fuzz.sdf"
    path.write_text("".join(blocks))
    try:
        records = read_structures(path)
    except StructureReadError:
        assert not any(ok)
        return
    assert len(records) == 5 and [r.index for r in records] == list(range(5))
    assert [r.error is None for r in records] == ok
    assert all(r.error is None or "\n" not in r.error for r in records)
