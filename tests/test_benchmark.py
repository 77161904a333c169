"""End-to-end relaxation benchmark on a few molecules: identity, MMFF94 and a tiny model."""

import csv
import json
import math

import numpy as np
import pytest

from morered.evaluation import benchmark as B
from morered.evaluation.baselines import BaselineResult


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_end_to_end(tmp_path, tiny_model_path):
    out = tmp_path / "bench"
    res = B.run_relax_benchmark(
        n=3, out=out, seed=0, methods=("identity", "mmff", "jt"), kinds=("diffused_100", "mmff_min"),
        max_steps=20, model=str(tiny_model_path), progress=False, cache=False, batch_size=8,
    )
    for name in ("results.csv", "summary.md", "summary.json", "ratio_boxplot.png", "rmsd_before_after.png"):
        assert (out / name).stat().st_size > 0, name
    rows = read_rows(out / "results.csv")
    assert res["skipped"] == {}  # MoreRed-JT really ran, not silently skipped
    ran = ["identity", "mmff", "jt"]
    assert {r["method"] for r in rows} == set(ran)
    assert len(rows) == 3 * 2 * len(ran)  # every method on every input: nothing dropped
    # the same inputs for every method: the input RMSD agrees across methods
    by = {(r["method"], r["kind"], r["mol_id"]): r for r in rows}
    for (m, kind, mol), r in by.items():
        assert float(r["rmsd_in"]) == pytest.approx(float(by[("identity", kind, mol)]["rmsd_in"]))
    for r in rows:
        if r["method"] == "identity":
            assert float(r["ratio"]) == 1.0 and r["failure"] == "False"
        if r["method"] == "jt":  # the sampler's own record comes through
            assert r["t0"] != "" and int(float(r["steps"])) <= 20
    summary = (out / "summary.md").read_text()
    assert "| method | kind |" in summary and "| mmff | diffused_100 |" in summary
    assert {(s["method"], s["kind"]) for s in res["summary"]} == {(m, k) for m in ran for k in ("diffused_100", "mmff_min")}
    for s in res["summary"]:
        assert s["n"] == 3 and s["structures_per_s"] > 0 and s["threads"] >= 1


def test_missing_tools_and_models_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "available", lambda m: (m != "xtb", "xtb: tblite not installed"))
    res = B.run_relax_benchmark(
        n=2, out=tmp_path, methods=("identity", "xtb", "itp"), kinds=("diffused_50",), max_steps=5,
        model=str(tmp_path / "no_such_model.pt"), progress=False, cache=False,
    )
    assert res["skipped"]["xtb"] == "xtb: tblite not installed"
    assert "itp" in res["skipped"]
    assert {r["method"] for r in res["rows"]} == {"identity"}
    md = (tmp_path / "summary.md").read_text()
    assert "## Skipped methods" in md and "- xtb: xtb: tblite not installed" in md


def test_as_needs_a_time_model(tmp_path, tiny_model_path, capsys):
    """A JT model alone cannot run AS (skipped, with the reason); paired with a separate time
    model (--time-model) it can."""
    res = B.run_relax_benchmark(n=2, out=tmp_path / "alone", methods=("identity", "as"), kinds=("diffused_50",),
                                max_steps=3, model=str(tiny_model_path), progress=False, cache=False)
    assert "separate time and noise networks" in res["skipped"]["as"]
    assert {r["method"] for r in res["rows"]} == {"identity"}

    from morered.cli import main

    rc = main(["benchmark", "relax", "--n", "2", "--methods", "as", "--kinds", "diffused_50", "--max-steps", "3",
               "--model", str(tiny_model_path), "--time-model", str(tiny_model_path),
               "--out", str(tmp_path / "paired"), "--quiet", "--no-cache"])
    assert rc == 0
    assert "| as | diffused_50 | 2 |" in capsys.readouterr().out
    assert {r["method"] for r in read_rows(tmp_path / "paired" / "results.csv")} == {"as"}


def test_morered_errors(tmp_path, tiny_model_path, monkeypatch):
    """A structure MoreRed reports an error for is a failure row; an exception from relax is a
    bug and propagates."""
    from morered.sampling.api import RelaxResult

    real = B.relax

    def one_rejected(atoms, **kw):
        out = real(atoms, **kw)
        out[1] = RelaxResult(None, error="rejected")
        return out

    monkeypatch.setattr(B, "relax", one_rejected)
    res = B.run_relax_benchmark(n=3, out=tmp_path, methods=("jt",), kinds=("diffused_50",), max_steps=3,
                                model=str(tiny_model_path), progress=False, cache=False)
    assert [r["error"] for r in res["rows"]] == [None, "rejected", None]
    assert res["rows"][1]["failure"] and res["rows"][1]["ratio"] == math.inf

    def broken(atoms, **kw):
        raise RuntimeError("sampler bug")

    monkeypatch.setattr(B, "relax", broken)
    with pytest.raises(RuntimeError, match="sampler bug"):
        B.run_relax_benchmark(n=2, out=tmp_path, methods=("jt",), kinds=("diffused_50",), max_steps=3,
                              model=str(tiny_model_path), progress=False, cache=False)


def test_failed_structure_counts_as_failure(tmp_path, monkeypatch):
    """A method that errors on one structure: that row is a failure with ratio inf, still in the
    table and in n."""
    real = B.BASELINES["identity"]
    calls = {"n": 0}

    def flaky(numbers, positions, ref_positions, max_steps, **opts):
        calls["n"] += 1
        if calls["n"] == 2:
            return BaselineResult(None, 0, False, 0.0, "RuntimeError: exploded")
        return real(numbers, positions, ref_positions, max_steps)

    monkeypatch.setitem(B.BASELINES, "identity", flaky)
    res = B.run_relax_benchmark(n=3, out=tmp_path, methods=("identity",), kinds=("diffused_50",),
                                progress=False, cache=False)
    rows = res["rows"]
    assert len(rows) == 3
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["ratio"] == math.inf and bad[0]["failure"] and bad[0]["rmsd"] == math.inf
    s = res["summary"][0]
    assert s["n"] == 3 and s["n_error"] == 1 and s["failure_pct"] == pytest.approx(100 / 3)


def test_user_inputs(tmp_path):
    import ase.io

    from morered.evaluation.inputs import qm9_references

    refs = qm9_references(2, seed=1)
    ref_atoms = [refs.atoms(k) for k in range(2)]
    ase.io.write(tmp_path / "refs.extxyz", ref_atoms)
    rng = np.random.default_rng(0)
    inputs = []
    for a in ref_atoms + ref_atoms[:1]:
        b = a.copy()
        b.positions += rng.normal(0, 0.1, b.positions.shape)
        inputs.append(b)
    ase.io.write(tmp_path / "inputs.extxyz", inputs)
    res = B.run_relax_benchmark(out=tmp_path / "out", methods=("identity", "mmff"), inputs=tmp_path / "inputs.extxyz",
                                refs=tmp_path / "refs.extxyz", progress=False, xtb_energy=True)
    rows = res["rows"]
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"user"}
    assert [r["mol_id"] for r in rows[:3]] == [str(refs.ids[0]), str(refs.ids[1]), str(refs.ids[0])]
    assert all(np.isfinite(r["dE_xtb"]) for r in rows)
    ident = [r for r in rows if r["method"] == "identity"]
    assert all(r["dE_xtb"] > 0 for r in ident)  # a distorted input lies above the minimum
    assert "ΔE" in (tmp_path / "out" / "summary.md").read_text()


def test_dft_energies_on_the_first_molecules(tmp_path, monkeypatch):
    """--dft N: the reference and every result of the first N molecules get a single point
    (a stand-in energy here: PySCF is minutes per molecule); the others get none."""
    import morered.evaluation.energies as E

    calls = []

    def fake_dft(numbers, positions):
        calls.append(len(numbers))
        return -float(np.sum(np.asarray(positions) ** 2)) * 1e-3  # Hartree, any smooth function

    monkeypatch.setattr(E, "dft_energy", fake_dft)
    res = B.run_relax_benchmark(n=3, out=tmp_path, methods=("identity", "mmff"), kinds=("diffused_50", "mmff_min"),
                                dft=1, progress=False, cache=False)
    first = res["rows"][0]["mol_id"]
    with_dft = [r for r in res["rows"] if "dE_dft" in r]
    assert {r["mol_id"] for r in with_dft} == {first}
    assert len(with_dft) == 4  # 2 methods x 2 kinds
    assert len(calls) == 1 + 4  # one reference energy shared by both kinds, plus every result
    assert all(np.isfinite(r["dE_dft"]) for r in with_dft)
    s = {(x["method"], x["kind"]): x for x in res["summary"]}
    assert s[("identity", "diffused_50")]["dE_dft_n"] == 1


def test_command_line(tmp_path, capsys):
    from morered.cli import main

    rc = main(["benchmark", "relax", "--n", "2", "--methods", "identity,mmff", "--kinds", "diffused_50",
               "--out", str(tmp_path), "--quiet", "--no-cache"])
    assert rc == 0
    assert "| mmff | diffused_50 | 2 |" in capsys.readouterr().out
    assert (tmp_path / "results.csv").exists()


def test_speed_benchmark_rows_ratios_and_accuracy(tmp_path, tiny_model_path):
    from morered.evaluation.speed import run_speed_benchmark

    res = run_speed_benchmark(n=2, out=tmp_path / "speed", kinds=("diffused_100",), kernels=("dense", "edges"),
                              threads=(1,), rules=("default", "legacy"), baselines=("mmff",),
                              model=str(tiny_model_path), max_steps=5, profile=True, progress=False)
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["MMFF94 (RDKit)"] + ["MoreRed-JT"] * 4
    assert {(r["kernel"], r["rule"]) for r in rows[1:]} == {(k, u) for k in ("dense", "edges") for u in ("default", "legacy")}
    mmff = rows[0]
    assert mmff["vs_mmff94"] == pytest.approx(1.0) and mmff["vs_xtb"] is None
    for r in rows:
        assert r["structures_per_s"] > 0 and r["seconds_per_structure"] == pytest.approx(1 / r["structures_per_s"])
        assert r["vs_mmff94"] == pytest.approx(r["structures_per_s"] / mmff["structures_per_s"])
        assert math.isfinite(r["median_rmsd"]) and 0 <= r["failure_pct"] <= 100 and r["n"] == 2
    # the same weights: both kernels give the same relaxation
    for rule in ("default", "legacy"):
        a, b = [r for r in rows[1:] if r["rule"] == rule]
        assert a["median_rmsd"] == pytest.approx(b["median_rmsd"], abs=1e-4)
    md = (tmp_path / "speed" / "summary.md").read_text()
    assert "| MoreRed-JT | dense kernel, 1 thread(s), batch 128, default rule |" in md
    assert "aten::" in (tmp_path / "speed" / "profile.txt").read_text()


def test_speed_benchmark_refuses_bad_options(capsys):
    from morered.cli import main

    assert main(["benchmark", "speed", "--kernels", "sparse"]) == 2
    assert "--kernels" in capsys.readouterr().err
    assert main(["benchmark", "speed", "--rules", "fast"]) == 2


def test_speed_benchmark_large_input_row(tmp_path, tiny_model_path):
    """`--large N`: N diffused structures relaxed from disk to disk in a subprocess, one row with
    structures/s, wall and peak RSS (issue 13)."""
    from morered.evaluation.speed import run_speed_benchmark

    res = run_speed_benchmark(n=2, out=tmp_path / "speed", kinds=(), baselines=(), model=str(tiny_model_path),
                              profile=False, progress=False, large=50, large_max_steps=2)
    r = res["large"]
    assert r["n"] == 50 and r["rc"] in (0, 1) and r["structures_per_s"] > 0 and r["peak_rss_mib"] > 50
    assert r["summary"].startswith("50 structures:")
    assert 0 < r["rate_process"] < r["structures_per_s"]  # the process also imports and loads the model
    assert json.loads((tmp_path / "speed" / "results.json").read_text())["large"]["n"] == 50
    md = (tmp_path / "speed" / "summary.md").read_text()
    row = [line for line in md.splitlines() if line.startswith("| MoreRed-JT, `morered relax` streamed | 50 |")]
    assert len(row) == 1 and float(row[0].split("|")[3]) > 0 and float(row[0].split("|")[6]) > 0
    work = tmp_path / "speed" / "large_input"
    assert [p.name for p in work.iterdir()] == ["large_50_t100_seed0.extxyz"]  # input kept, output removed
    from morered.io import read_structures

    recs = read_structures(work / "large_50_t100_seed0.extxyz")
    assert len(recs) == 50 and abs(recs[0].atoms.positions.mean(0)).max() < 1e-5  # centred: diffused


def test_speed_benchmark_large_needs_something_to_measure(capsys):
    from morered.cli import main

    assert main(["benchmark", "speed", "--kinds", "", "--large", "0"]) == 2
    assert "--large" in capsys.readouterr().err
