"""The command line: relax round trips per format, trajectories, score, bad input, exit codes,
and train -> relax -> score end to end."""

import csv
import io
import subprocess
import sys

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds

import morered
from morered.cli import main
from morered.io import errors_path, mol_from_atoms, read_structures

MORERED_FIELDS = ("morered_steps", "morered_converged", "morered_stop", "morered_t0", "morered_t_final", "morered_variant")


def _frames(test_molecules, n=4, noise=0.05):
    rng = np.random.default_rng(1)
    frames = []
    for k in range(n):
        x, z = test_molecules.molecule(k)
        x = x.astype(np.float64) + noise * rng.standard_normal(x.shape) + [2.0 * k, 0.0, -1.0]
        frames.append(Atoms(numbers=z, positions=x, info={"name": f"mol{k}", "energy_dft": -100.0 - k}))
    return frames


def _write_input(path, frames):
    """Write ``frames`` in the format of ``path``'s extension (SDF with bonds and properties)."""
    ext = path.suffix
    if ext in (".xyz", ".extxyz"):
        ase.io.write(path, frames, format="extxyz")
    elif ext == ".db":
        with ase.db.connect(path) as db:
            for a in frames:
                db.write(Atoms(a.numbers, a.positions), key_value_pairs=dict(a.info))
    elif ext == ".sdf":
        w = Chem.SDWriter(str(path))
        for a in frames:
            mol = mol_from_atoms(a, bonds=False)
            rdDetermineBonds.DetermineBonds(mol, charge=0)  # bond orders, not only connectivity
            mol.SetProp("_Name", a.info["name"])
            mol.SetProp("energy_dft", str(a.info["energy_dft"]))
            w.write(mol)
        w.close()
    else:
        raise ValueError(ext)


def _relax(args):
    return main(["relax", *map(str, args), "--no-progress"])


def _bonds(mol):
    return sorted((*sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx())), str(b.GetBondType())) for b in mol.GetBonds())


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("ext", [".xyz", ".extxyz", ".db", ".sdf"])
def test_relax_round_trip(tmp_path, test_molecules, tiny_model_path, ext):
    frames = _frames(test_molecules)
    inp, out = tmp_path / f"in{ext}", tmp_path / f"out{ext}"
    _write_input(inp, frames)
    # a high start step: the untrained model's noise is tiny, but 1/sqrt(alpha_t) moves the atoms
    code = _relax([inp, "-o", out, "--model", tiny_model_path, "--max-steps", "5", "--variant", "ddpm",
                   "--t-start", "900"])
    assert code == 0
    assert not errors_path(out).exists()
    read_back = [r.atoms for r in read_structures(inp)]  # SDF rounds coordinates to 1e-4 Å
    expected = morered.relax(read_back, tiny_model_path, "ddpm", t_start=900, max_steps=5)
    records = read_structures(out)
    assert [r.name for r in records] == [a.info["name"] for a in frames]
    for rec, a, exp in zip(records, frames, expected):
        assert rec.atoms.numbers.tolist() == a.numbers.tolist()
        np.testing.assert_allclose(rec.atoms.positions, exp.positions, atol=1e-4 if ext == ".sdf" else 1e-6)
        assert np.abs(rec.atoms.positions - a.positions).max() > 1e-2  # relaxed, not copied
        info = rec.atoms.info
        for key in MORERED_FIELDS:
            assert key in info, (ext, key, info)
        assert int(info["morered_steps"]) == 5 and int(info["morered_t0"]) == 900
        assert str(info["morered_variant"]) == "ddpm"
        assert float(info["energy_dft"]) == a.info["energy_dft"]  # the input's metadata stays
    if ext == ".sdf":
        src = Chem.SDMolSupplier(str(inp), removeHs=False, sanitize=False)
        dst = Chem.SDMolSupplier(str(out), removeHs=False, sanitize=False)
        kinds = set()
        for m_in, m_out in zip(src, dst):
            assert m_out.GetNumBonds() > 0 and _bonds(m_out) == _bonds(m_in)
            kinds.update(kind for _, _, kind in _bonds(m_out))
            assert m_out.GetProp("energy_dft") == m_in.GetProp("energy_dft")
            assert m_out.GetProp("morered_steps") == "5"
        assert {"DOUBLE", "TRIPLE"} <= kinds  # bond orders survive, not only connectivity


def test_relax_default_variant_and_trajectories(tmp_path, test_molecules, tiny_model_path, capsys):
    frames = _frames(test_molecules, n=3)
    inp, out, traj = tmp_path / "in.xyz", tmp_path / "out.xyz", tmp_path / "traj"
    _write_input(inp, frames)
    assert _relax([inp, "-o", out, "--model", tiny_model_path, "--max-steps", "5", "--trajectory", traj]) == 0
    assert "3 structures: 3 relaxed" in capsys.readouterr().out
    records = read_structures(out)
    assert [str(r.atoms.info["morered_variant"]) for r in records] == ["jt"] * 3
    files = sorted(traj.glob("*.extxyz"))
    assert len(files) == 3
    for k, (path, rec, a) in enumerate(zip(files, records, frames)):
        assert path.name.startswith(f"{k:05d}_mol{k}")
        steps = ase.io.read(path, ":")
        assert len(steps) >= 1 + int(rec.atoms.info["morered_steps"])
        assert all("t_hat" in s.info for s in steps)
        assert steps[0].info["t_hat"] == int(rec.atoms.info["morered_t0"])
        np.testing.assert_allclose(steps[0].positions, a.positions, atol=1e-6)
        np.testing.assert_allclose(steps[-1].positions, rec.atoms.positions, atol=1e-6)


def test_relax_itp_with_separate_time_model(tmp_path, test_molecules, tiny_model_path):
    frames = _frames(test_molecules, n=2)
    inp, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    _write_input(inp, frames)
    code = _relax([inp, "-o", out, "--model", tiny_model_path, "--time-model", tiny_model_path, "--variant", "as",
                   "--max-steps", "3"])
    assert code == 0
    assert [str(r.atoms.info["morered_variant"]) for r in read_structures(out)] == ["as", "as"]


# ------------------------------------------------------------------------------------ score
def test_score_prints_one_row_per_input(tmp_path, test_molecules, tiny_model_path, capsys):
    frames = _frames(test_molecules, n=5)
    inp = tmp_path / "in.xyz"
    _write_input(inp, frames)
    assert main(["score", str(inp), "--model", str(tiny_model_path)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == [f"mol{k}" for k in range(5)]
    assert [int(r["index"]) for r in rows] == list(range(5))
    expected = morered.score(frames, tiny_model_path)
    for r, e in zip(rows, expected):
        assert r["error"] == ""
        assert float(r["t"]) == pytest.approx(e, abs=0.051)
        assert 0.0 <= float(r["t"]) <= 1000.0 and float(r["rmsd_equiv"]) >= 0.0
    out = tmp_path / "scores.csv"
    assert main(["score", str(inp), "--model", str(tiny_model_path), "-o", str(out)]) == 0
    assert len(list(csv.DictReader(open(out)))) == 5


# ------------------------------------------------------------------------------------ bad input
def _bad_file(tmp_path, test_molecules):
    good = _frames(test_molecules, n=3)
    silicon = good[0].copy()
    silicon.numbers[0] = 14
    silicon.info["name"] = "silicon"
    nan = good[1].copy()
    nan.positions[1, 2] = np.nan
    nan.info["name"] = "nan"
    overlap = good[2].copy()
    overlap.positions[1] = overlap.positions[0] + [0.0, 0.2, 0.0]
    overlap.info["name"] = "overlap"
    grid = np.stack(np.meshgrid(*[np.arange(4.0) * 1.5] * 3, indexing="ij"), -1).reshape(-1, 3)
    big = Atoms(numbers=[6] * len(grid), positions=grid, info={"name": "big"})
    lonely = Atoms("C", positions=[[0.0, 0.0, 0.0]], info={"name": "lonely"})
    frames = [good[0], silicon, lonely, good[1], nan, overlap, big, good[2]]
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, frames, format="extxyz")
    reasons = {"silicon": "not trained on: Si", "lonely": "1 atom(s)", "nan": "non-finite",
               "overlap": "overlapping atoms", "big": "the model accepts at most 58"}
    return path, frames, reasons


def test_relax_bad_structures(tmp_path, test_molecules, tiny_model_path, capsys):
    inp, frames, reasons = _bad_file(tmp_path, test_molecules)
    out = tmp_path / "out.extxyz"
    code = _relax([inp, "-o", out, "--model", tiny_model_path, "--max-steps", "5"])
    assert code == 1
    err = capsys.readouterr().err
    assert "5 structures not relaxed" in err
    for name in reasons:
        assert f"{name}:" in err
    relaxed = [r.name for r in read_structures(out)]
    assert relaxed == ["mol0", "mol1", "mol2"]  # input order
    with open(errors_path(out), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["name"]: r["reason"] for r in rows}.keys() == reasons.keys()
    for r in rows:
        assert reasons[r["name"]] in r["reason"]
        assert frames[int(r["index"])].info["name"] == r["name"]
    assert sorted(relaxed + [r["name"] for r in rows]) == sorted(a.info["name"] for a in frames)

    # score: one row per input, the bad ones with their reason, exit 1
    assert main(["score", str(inp), "--model", str(tiny_model_path)]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == [a.info["name"] for a in frames]
    for r in rows:
        if r["name"] in reasons:
            assert reasons[r["name"]] in r["error"] and r["t"] == ""
        else:
            assert r["error"] == "" and r["t"] != ""


def test_relax_unreadable_sdf_record(tmp_path, test_molecules, tiny_model_path):
    frames = _frames(test_molecules, n=2)
    inp = tmp_path / "in.sdf"
    _write_input(inp, frames)
    text = inp.read_text().split("$$$$\n")
    broken = "broken\n  junk\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\nthis is not an atom line\nM  END\n"
    inp.write_text(text[0] + "$$$$\n" + broken + "$$$$\n" + text[1] + "$$$$\n")
    out = tmp_path / "out.sdf"
    assert _relax([inp, "-o", out, "--model", tiny_model_path, "--max-steps", "2"]) == 1
    assert [r.name for r in read_structures(out)] == ["mol0", "mol1"]
    rows = list(csv.DictReader(open(errors_path(out))))
    assert [(r["index"], r["name"]) for r in rows] == [("1", "broken")]
    assert "RDKit could not parse" in rows[0]["reason"]


@pytest.mark.parametrize("content", [None, "this is not\na structure file\n", ""])
def test_unreadable_file_exits_2(tmp_path, tiny_model_path, capsys, content):
    inp = tmp_path / "broken.xyz"
    if content is not None:
        inp.write_text(content)
    out = tmp_path / "out.xyz"
    assert _relax([inp, "-o", out, "--model", tiny_model_path]) == 2
    assert str(inp) in capsys.readouterr().err
    assert not out.exists()
    assert main(["score", str(inp), "--model", str(tiny_model_path)]) == 2
    assert str(inp) in capsys.readouterr().err


def test_unknown_format_and_bad_options_exit_2(tmp_path, test_molecules, tiny_model_path, capsys):
    weird = tmp_path / "mols.weird"
    weird.write_text("1 2 3\n")
    assert _relax([weird, "-o", tmp_path / "o.xyz", "--model", tiny_model_path]) == 2
    assert "mols.weird" in capsys.readouterr().err
    inp = tmp_path / "in.xyz"
    _write_input(inp, _frames(test_molecules, n=1))
    assert _relax([inp, "-o", tmp_path / "o.xyz", "--model", tiny_model_path, "--variant", "ddpm"]) == 2
    assert "--t-start" in capsys.readouterr().err
    assert _relax([inp, "-o", tmp_path / "o.xyz", "--model", tmp_path / "missing.pt"]) == 2
    assert "missing.pt" in capsys.readouterr().err
    # deterministic DDIM jumps cannot carry posterior noise: both asked for -> refused, nothing written
    assert _relax([inp, "-o", tmp_path / "o.xyz", "--model", tiny_model_path, "--stochastic", "--jump", "0.3"]) == 2
    assert "--jump" in capsys.readouterr().err and not (tmp_path / "o.xyz").exists()


def test_a_force_field_given_as_diffusion_model_is_named_as_such(tmp_path, test_molecules, capsys):
    """The shipped force fields (by name or file) are not diffusion models: exit 2 and say how to use them."""
    from importlib import resources
    inp = tmp_path / "in.xyz"
    _write_input(inp, _frames(test_molecules, n=1))
    mlff_file = str(resources.files("morered.models").joinpath("mlff.pt"))
    for model in ("mlff", "mlff-dens", mlff_file):
        assert _relax([inp, "-o", tmp_path / "o.xyz", "--model", model]) == 2
        err = capsys.readouterr().err
        assert "is a force field" in err and "morered.calculators.ForceField" in err, err
    assert not (tmp_path / "o.xyz").exists()


def test_stochastic_relaxation_draws_noise_from_the_seed(test_molecules, tiny_model_path):
    """``stochastic=True`` changes an AS/JT relaxation with the default options (the adaptive phase's
    deterministic DDIM jumps once swallowed the noise: two seeds gave identical structures)."""
    frames = _frames(test_molecules, n=3)
    for a in frames:
        a.positions += np.random.default_rng(0).normal(0, 0.2, a.positions.shape)
    a, b, c = (morered.relax(frames, tiny_model_path, stochastic=True, seed=s, max_steps=20) for s in (1, 1, 2))
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(a, b))
    assert max(np.abs(x.positions - z.positions).max() for x, z in zip(a, c)) > 1e-4
    d, e = (morered.relax(frames, tiny_model_path, seed=s, max_steps=20) for s in (1, 2))
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(d, e))


def test_entry_point_runs_as_a_module(tmp_path, test_molecules, tiny_model_path):
    """``python -m morered.cli``: exit codes reach the shell."""
    inp = tmp_path / "in.xyz"
    _write_input(inp, _frames(test_molecules, n=1))
    proc = subprocess.run([sys.executable, "-m", "morered.cli", "relax", str(tmp_path / "nope.xyz"), "-o",
                           str(tmp_path / "o.xyz"), "--model", str(tiny_model_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "nope.xyz" in proc.stderr


# ------------------------------------------------------------------------------------ end to end
TINY_SET = ["--set", "model.representation={n_features: 16, n_interactions: 1, n_rbf: 8}",
            "--set", "data.limit_val=16", "--set", "trainer.val_every_steps=5",
            "--set", "trainer.log_every_steps=1", "--set", "trainer.accelerator=cpu"]


def test_train_relax_score_end_to_end(tmp_path, test_molecules, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--max-steps", "5", "--limit-train", "32", "--batch-size", "8",
                 *TINY_SET]) == 0
    for name in ("model.pt", "best.pt", "config.yaml", "summary.json", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    lm = morered.load_model(run / "model.pt")
    assert lm.model_type == "jt" and lm.model.representation.n_features == 16

    frames = _frames(test_molecules, n=3)
    inp, out = tmp_path / "in.sdf", tmp_path / "out.sdf"
    _write_input(inp, frames)
    assert _relax([inp, "-o", out, "--model", run / "model.pt", "--max-steps", "5"]) == 0
    records = read_structures(out)
    assert [r.name for r in records] == ["mol0", "mol1", "mol2"]
    assert all(np.isfinite(r.atoms.positions).all() for r in records)
    capsys.readouterr()
    assert main(["score", str(out), "--model", str(run / "best.pt")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == ["mol0", "mol1", "mol2"] and all(r["t"] for r in rows)


def test_unwritable_output_format_is_refused_before_any_work(tmp_path, capsys):
    from morered.cli import main

    src = tmp_path / "in.xyz"
    ase.io.write(src, [Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])])
    assert main(["relax", str(src), "-o", str(tmp_path / "out.unknownformat"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unknownformat" in err
    assert not (tmp_path / "out.unknownformat").exists()
