"""Hostile input, bad options and interruptions: one error line and a documented exit code, no
traceback, no lost or stale output, every structure accounted for (issue 11)."""

import csv
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

import morered
from morered.cli import main
from morered.errors import ModelError, OptionError, OutputError, StructureError
from morered.io import atomic_write, errors_path, one_line, progress_bar, read_structures, validate

QM9_ELEMENTS = {1, 6, 7, 8, 9}


def _frames(test_molecules, n=4, offset=0.0):
    rng = np.random.default_rng(1)
    out = []
    for k in range(n):
        x, z = test_molecules.molecule(k)
        x = x.astype(np.float64) + 0.05 * rng.standard_normal(x.shape) + offset
        out.append(Atoms(numbers=z, positions=x, info={"name": f"mol{k}"}))
    return out


def _relax(*args):
    return main(["relax", *map(str, args), "--no-progress"])


def _errors(out):
    with open(errors_path(out), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def inp(tmp_path, test_molecules):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _frames(test_molecules), format="extxyz")
    return path


@pytest.fixture
def no_relax(monkeypatch):
    """Fail the test if any relaxation starts (checks must come before the work)."""
    import morered.sampling.api as api

    def boom(*a, **k):
        raise AssertionError("relaxation ran although the run should have been refused")

    monkeypatch.setattr(api, "relax", boom)


# ------------------------------------------------------------------ 1, 9: output checked first
@pytest.mark.parametrize("case", ["missing_dir", "is_dir", "readonly", "input", "trajectory_file"])
def test_bad_output_refused_before_any_work(tmp_path, inp, tiny_model_path, capsys, no_relax, case):
    out, extra = tmp_path / "out.extxyz", []
    if case == "missing_dir":
        out = tmp_path / "nope" / "out.extxyz"
    elif case == "is_dir":
        out = tmp_path / "adir"
        out.mkdir()
    elif case == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root can write to read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out.extxyz"
    elif case == "input":
        out = inp
    else:
        (tmp_path / "traj").write_text("a file")
        extra = ["--trajectory", tmp_path / "traj"]
    before = inp.read_bytes()
    assert _relax(inp, "-o", out, "--model", tiny_model_path, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert inp.read_bytes() == before
    assert not list(tmp_path.glob("**/*.part")) and not list(tmp_path.glob("**/.*part*"))
    if case == "is_dir":
        assert list(out.iterdir()) == []


def test_score_refuses_to_overwrite_its_input(inp, tiny_model_path, capsys):
    before = inp.read_bytes()
    assert main(["score", str(inp), "-o", str(inp), "--model", str(tiny_model_path)]) == 2
    assert "input" in capsys.readouterr().err and inp.read_bytes() == before


# ------------------------------------------------------------------ 2: one bad frame
BAD_FRAMES = {
    "coordinate": lambda lines: lines[:2] + [lines[2].replace(lines[2].split()[1], "abc", 1)] + lines[3:],
    "symbol": lambda lines: lines[:2] + ["Xx" + lines[2][lines[2].index(" "):]] + lines[3:],
    "count_high": lambda lines: [str(int(lines[0]) + 2)] + lines[1:],
    "count_low": lambda lines: [str(int(lines[0]) - 1)] + lines[1:],
}


def _frame_text(atoms):
    buf = io.StringIO()
    ase.io.write(buf, atoms, format="extxyz")
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_one_bad_frame_is_one_error_record(tmp_path, test_molecules, tiny_model_path, capsys, kind):
    frames = _frames(test_molecules)
    lines = []
    for k, a in enumerate(frames):
        text = _frame_text(a)
        lines += BAD_FRAMES[kind](text) if k == 1 else text
    path = tmp_path / "in.xyz"
    path.write_text("\n".join(lines) + "\n")
    records = read_structures(path)
    assert [r.name for r in records] == ["mol0", "mol1", "mol2", "mol3"]
    assert [r.error is None for r in records] == [True, False, True, True]
    assert "frame 1" in records[1].error
    for k in (0, 2, 3):
        np.testing.assert_allclose(records[k].atoms.positions, frames[k].positions, atol=1e-6)
    out = tmp_path / "out.extxyz"
    assert _relax(path, "-o", out, "--model", tiny_model_path, "--max-steps", "2") == 1
    assert [r.name for r in read_structures(out)] == ["mol0", "mol2", "mol3"]
    assert [(r["index"], r["name"]) for r in _errors(out)] == [("1", "mol1")]


def test_train_data_with_bad_frames_skips_them_with_reasons(tmp_path, test_molecules):
    from morered.training.train import load_own_structures

    frames = _frames(test_molecules, n=5)
    frames[2].positions[0, 0] = np.nan
    lines = []
    for k, a in enumerate(frames):
        text = _frame_text(a)
        lines += BAD_FRAMES["symbol"](text) if k == 3 else text
    path = tmp_path / "train.xyz"
    path.write_text("\n".join(lines) + "\n")
    mols, skipped = load_own_structures(path)
    assert len(mols) == 3
    assert [(s["index"], s["name"]) for s in skipped] == [(2, "mol2"), (3, "mol3")]
    assert "non-finite" in skipped[0]["reason"] and "frame 3" in skipped[1]["reason"]


# ------------------------------------------------------------------ 3, 10: stale and empty outputs
def test_clean_run_removes_the_stale_errors_file(tmp_path, inp, tiny_model_path):
    out = tmp_path / "out.extxyz"
    errors_path(out).write_text("index,name,reason\n0,old,from an earlier run\n")
    assert _relax(inp, "-o", out, "--model", tiny_model_path, "--max-steps", "2") == 0
    assert not errors_path(out).exists() and len(read_structures(out)) == 4


def test_all_rejected_writes_no_output_and_lists_every_structure(tmp_path, tiny_model_path, capsys):
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, [Atoms("Si2", positions=[[0, 0, 0], [2.3, 0, 0]], info={"name": "si"}),
                        Atoms("C", info={"name": "lonely"})], format="extxyz")
    out = tmp_path / "out.extxyz"
    out.write_text("stale output of an earlier run\n")
    assert _relax(path, "-o", out, "--model", tiny_model_path) == 1
    assert not out.exists()  # no 0-byte file that ase cannot read, no stale one
    assert [r["name"] for r in _errors(out)] == ["si", "lonely"]
    printed = capsys.readouterr().out
    assert "nothing relaxed" in printed
    assert "median steps –," in printed and "nan" not in printed  # no median of nothing


def test_directory_as_input_is_named_as_such(tmp_path, tiny_model_path, capsys):
    assert _relax(tmp_path, "-o", tmp_path / "o.xyz", "--model", tiny_model_path) == 2
    assert "is a directory" in capsys.readouterr().err


# ------------------------------------------------------------------ 4: bad options
@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--batch-size", "-3"], ["--max-steps", "-1"],
                                    ["--patience", "-3"], ["--t-eq", "-2"], ["--t-conv", "-1"],
                                    ["--max-atoms", "1"], ["--batch-size", "many"]])
def test_bad_numeric_options_exit_2_without_traceback(tmp_path, inp, tiny_model_path, capsys, option):
    with pytest.raises(SystemExit) as e:
        _relax(inp, "-o", tmp_path / "o.xyz", "--model", tiny_model_path, *option)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument " + option[0] in err and "Traceback" not in err
    if option[0] == "--batch-size":
        with pytest.raises(SystemExit) as e:
            main(["score", str(inp), *option])
        assert e.value.code == 2


def _write_models(tmp_path, tiny_model_path, inp):
    text = tmp_path / "model.txt"
    text.write_text("not a model\n")
    incomplete = tmp_path / "incomplete.pt"
    ckpt = torch.load(tiny_model_path, weights_only=True)
    del ckpt["state_dict"]
    torch.save(ckpt, incomplete)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_model_path.read_bytes()[:1000])
    return {"text": text, "incomplete": incomplete, "truncated": truncated, "directory": tmp_path,
            "structure": inp, "missing": tmp_path / "missing.pt"}


@pytest.mark.parametrize("kind", ["text", "incomplete", "truncated", "directory", "structure", "missing"])
def test_unusable_model_exits_2_before_reading(tmp_path, inp, tiny_model_path, capsys, no_relax, kind):
    model = _write_models(tmp_path, tiny_model_path, inp)[kind]
    assert _relax(inp, "-o", tmp_path / "o.xyz", "--model", model) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(model) in err and "Traceback" not in err
    assert main(["score", str(inp), "--model", str(model)]) == 2
    with pytest.raises(ModelError):
        morered.load_model(model)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_checkpoint_is_refused_without_running_it(tmp_path, inp, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "morered-model/1", "x": _Payload()}, f)
    assert _relax(inp, "-o", tmp_path / "o.xyz", "--model", evil) == 2
    assert "pickled" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "gpu0", "tpu"])
def test_unavailable_or_unknown_device_exits_2(tmp_path, inp, tiny_model_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    assert _relax(inp, "-o", tmp_path / "o.xyz", "--model", tiny_model_path, "--device", device) == 2
    assert f"--device {device}" in capsys.readouterr().err.replace("'", "")
    with pytest.raises(OptionError):
        morered.relax(read_structures(inp)[0].atoms, tiny_model_path, device=device)


def test_api_options_raise_option_error(inp, tiny_model_path):
    atoms = read_structures(inp)[0].atoms
    for kwargs in ({"max_steps": -1}, {"patience": -3}, {"batch_size": 0}, {"variant": "nope"},
                   {"variant": "ddpm"}, {"variant": "ddpm", "t_start": 5000}):
        with pytest.raises(OptionError):
            morered.relax(atoms, tiny_model_path, **{"variant": "jt", **kwargs})


# ------------------------------------------------------------------ 5: far-away atoms
def test_far_away_atom_is_refused_with_a_reason(tmp_path, test_molecules, tiny_model_path):
    far, frag = _frames(test_molecules, n=2)
    far.positions[0, 0] = 1e6
    frag.positions[:3] += [0.0, 0.0, 11.0]  # a fragment beyond the 5 Å cutoff, within the extent
    res = morered.relax([far, frag], tiny_model_path, max_steps=2)
    assert res[0].positions is None and "too spread out" in res[0].error
    assert res[1].positions is None and "disconnected" in res[1].error
    before = far.positions.copy()
    with pytest.raises(StructureError, match="too spread out"):
        morered.MoreRedOptimizer(far, tiny_model_path, trajectory=tmp_path / "t.extxyz").run(steps=2)
    np.testing.assert_array_equal(far.positions, before)  # nothing changed, nothing written
    assert not (tmp_path / "t.extxyz").exists()


def test_far_from_the_origin_relaxes_as_at_the_origin(test_molecules, tiny_model_path):
    near = _frames(test_molecules, n=3)
    far = _frames(test_molecules, n=3, offset=np.array([5000.0, -3000.0, 2000.0]))
    a = morered.relax(near, tiny_model_path, max_steps=20, patience=0, t_eq=-1)
    b = morered.relax(far, tiny_model_path, max_steps=20, patience=0, t_eq=-1)
    for ra, rb, x, y in zip(a, b, near, far):
        assert ra.error is None and rb.error is None and ra.steps == rb.steps
        shift = y.positions.mean(0) - x.positions.mean(0)
        np.testing.assert_allclose(rb.positions - shift, ra.positions, atol=1e-6)


def test_validate_extent_and_gap():
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    assert validate(water, elements=QM9_ELEMENTS, max_atoms=29, max_extent=24.0, max_gap=5.0) is None
    water.positions[2] = [30.0, 0, 0]
    assert "too spread out" in validate(water, elements=QM9_ELEMENTS, max_atoms=29, max_extent=24.0)
    assert "disconnected" in validate(water, elements=QM9_ELEMENTS, max_atoms=29, max_gap=5.0)


# ------------------------------------------------------------------ 8: RDKit stack traces
def test_rdkit_stack_trace_becomes_one_line():
    trace = ("\n\n****\nPre-condition Violation\ngetNumImplicitHs() called without preceding call\n"
             "Violation occurred on line 235 in file Code/GraphMol/Atom.cpp\nFailed Expression: d > -1\n"
             "****\n" + "".join(f"  {k}# 0x7f00 in /usr/lib/librdkit.so RDKit::foo()\n" for k in range(200)))
    line = one_line(trace)
    assert "\n" not in line and len(line) <= 300
    assert line.startswith("Pre-condition Violation getNumImplicitHs()")


def test_sdf_reasons_are_one_line(tmp_path):
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSmiles("CC"))
    from rdkit.Chem import AllChem

    AllChem.EmbedMolecule(mol, randomSeed=1)
    good = Chem.MolToMolBlock(mol)
    bad = good.replace("  0  0  0  0  0  0  0  0  0  0  0  0\n", "  9  0  0  0  0  0  0  0  0  0  0  0\n", 1)
    path = tmp_path / "x.sdf"
    path.write_text(good + "$$$$\n" + bad.replace("0.0000 C", "0.0000 Qq", 1) + "$$$$\n" + good + "$$$$\n")
    for r in read_structures(path):
        assert r.error is None or "\n" not in r.error


# ------------------------------------------------------------------ 10: Ctrl-C, progress, atomic
def test_ctrl_c_keeps_what_is_done_and_exits_130(tmp_path, test_molecules, tiny_model_path, monkeypatch, capsys):
    import morered.sampling.api as api

    path = tmp_path / "in.extxyz"
    ase.io.write(path, _frames(test_molecules, n=6), format="extxyz")
    real, calls = api.relax, []

    def relax_then_ctrl_c(*a, **k):
        calls.append(len(a[0]))
        out = real(*a, **k)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first chunk is in flight
        return out

    monkeypatch.setattr(api, "relax", relax_then_ctrl_c)
    monkeypatch.setattr("morered.cli.relax.CHUNK_BATCHES", 2)  # chunks of 2 structures with --batch-size 1
    out = tmp_path / "out.extxyz"
    assert _relax(path, "-o", out, "--model", tiny_model_path, "--batch-size", "1", "--max-steps", "2") == 130
    assert len(calls) == 1  # the chunk in flight finished, no new one started
    done = [r.name for r in read_structures(out)]
    assert done == ["mol0", "mol1"]
    rows = _errors(out)
    assert [r["name"] for r in rows] == ["mol2", "mol3", "mol4", "mol5"]
    assert all("interrupted" in r["reason"] for r in rows)
    assert "Traceback" not in capsys.readouterr().err


def test_atomic_write_leaves_the_old_file_on_interruption(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with atomic_write(path) as tmp:
        tmp.write_text("new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_progress_is_throttled_when_not_a_terminal():
    stream = io.StringIO()
    bar = progress_bar(1000, "relax", "mol", stream=stream)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert stream.getvalue().count("\r") + stream.getvalue().count("\n") <= 3


def test_internal_error_is_one_line_and_exit_2(monkeypatch, inp, tmp_path, tiny_model_path, capsys):
    import morered.sampling.api as api

    def bug(*a, **k):
        raise RuntimeError("something unforeseen\nsecond line")

    monkeypatch.setattr(api, "relax", bug)
    assert _relax(inp, "-o", tmp_path / "o.xyz", "--model", tiny_model_path) == 2
    err = capsys.readouterr().err
    assert "error: internal error: RuntimeError: something unforeseen" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["--debug", "relax", str(inp), "-o", str(tmp_path / "o.xyz"), "--model", str(tiny_model_path),
              "--no-progress"])


# ------------------------------------------------------------------ 6: train refuses bad data and options
TINY = ["--set", "model.representation={n_features: 8, n_interactions: 1, n_rbf: 4}",
        "--set", "trainer.accelerator=cpu", "--set", "data.limit_val=4", "--set", "trainer.log_every_steps=1"]


@pytest.mark.parametrize("case", ["empty", "single", "one_atom", "missing", "nan_only", "out_is_file",
                                  "batch_zero", "bad_set", "bad_config", "bad_max_time", "no_gpu"])
def test_train_refuses_before_creating_anything(tmp_path, test_molecules, capsys, case):
    if case == "no_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data, out, extra = tmp_path / "d.extxyz", tmp_path / "run", []
    frames = _frames(test_molecules, n=3)
    if case == "empty":
        data.write_text("")
    elif case == "single":
        ase.io.write(data, frames[:1], format="extxyz")
    elif case == "one_atom":
        ase.io.write(data, [frames[0], Atoms("C"), Atoms("O")], format="extxyz")
    elif case == "nan_only":
        frames[0].positions[0] = np.nan
        frames[1].positions[1] = np.inf
        ase.io.write(data, frames[:2], format="extxyz")
    else:
        ase.io.write(data, frames, format="extxyz")
    if case == "missing":
        data = tmp_path / "nope.xyz"
    if case == "out_is_file":
        out.write_text("a file")
    extra = {"batch_zero": ["--batch-size", "0"], "bad_set": ["--set", "optim.lrr=1"],
             "bad_config": ["--config", str(tmp_path / "missing.yaml")],
             "bad_max_time": ["--max-time", "soon"], "no_gpu": ["--accelerator", "gpu"]}.get(case, [])
    tiny = TINY if case != "no_gpu" else TINY[:2]
    argv = ["train", "--data", str(data), "--out", str(out), "--max-steps", "1", *tiny, *extra]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert out.is_file() if case == "out_is_file" else not out.exists()


def _train_cmd(data, out, max_steps):
    return [sys.executable, "-m", "morered.cli", "train", "--data", str(data), "--out", str(out),
            "--max-steps", str(max_steps), "--batch-size", "2", "--threads", "1", *TINY,
            "--set", "trainer.checkpoint_every_steps=1000", "--set", "trainer.val_every_steps=1000"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_killed_training_keeps_its_steps_and_time(tmp_path, test_molecules, sig):
    """A run stopped by a signal long before its first step checkpoint (every 1000 steps here)
    saves one, exits 130, and a rerun resumes from it; summary.json counts both runs' steps and
    time."""
    data = tmp_path / "d.extxyz"
    ase.io.write(data, _frames(test_molecules, n=8), format="extxyz")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_train_cmd(data, out, 100000), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "config.yaml").exists():
        time.sleep(0.2)
    time.sleep(6.0)  # Lightning starts, some steps run
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log[-2000:]
    assert "Traceback" not in log and "error: training stopped at step" in log
    first = json.loads((out / "summary.json").read_text())
    assert first["interrupted"] and first["global_step"] > 0 and (out / "checkpoints" / "last.ckpt").exists()
    if sig == signal.SIGINT:
        return
    steps = first["global_step"]
    proc = subprocess.run(_train_cmd(data, out, steps + 2), capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    second = json.loads((out / "summary.json").read_text())
    assert second["global_step"] == steps + 2 and second["runs"] == 2
    assert second["wall_seconds_total"] > second["wall_seconds_this_run"] + 1.0


@pytest.mark.parametrize("option", [["--jump", "2"], ["--jump", "-0.1"], ["--tail-t", "-5"], ["--tail-steps", "-1"], ["--eq-tail-t", "-3"]])
def test_bad_relaxation_rule_options_exit_2_before_work(tmp_path, inp, tiny_model_path, capsys, option):
    out = tmp_path / "o.xyz"
    assert _relax(inp, "-o", out, "--model", tiny_model_path, *option) == 2
    err = capsys.readouterr().err
    assert "error: " + option[0] in err and "Traceback" not in err and not out.exists()


def test_generate_checks_its_output_before_generating(tmp_path, capsys):
    out = tmp_path / "missing" / "g.xyz"
    assert main(["generate", "--composition", "C2H6", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: -o" in err and "generate (" not in err  # refused before the progress bar started


def test_forcefield_without_labels_is_an_option_error(tmp_path, capsys):
    assert main(["train", "--model", "forcefield", "--out", str(tmp_path / "ff"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "forcefield.labels" in err and "internal error" not in err
