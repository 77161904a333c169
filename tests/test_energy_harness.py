"""The energy measurement harness: DFT single-point cache, ANI screen, energy statistics, bond and
angle errors by bond type, and the new input kinds (normal_mode_<T>, etkdg)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from morered.evaluation import energies as E
from morered.evaluation.geometry import bond_graph, bond_type, geometry_errors
from morered.evaluation.inputs import Structures, input_settings, is_kind, make_inputs
from morered.evaluation.report import energy_stats, summarize, summary_markdown, tracking
from morered.evaluation.rmsd import kabsch_rmsd

SETTINGS = {"level": "test"}


def methane():
    a = 0.629
    return np.array([6, 1, 1, 1, 1]), np.array([[0, 0, 0], [a, a, a], [-a, -a, a], [-a, a, -a], [a, -a, -a]], float)


def fake_energy(calls):
    def fn(numbers, positions):
        calls.append(len(numbers))
        return -float(np.sum(np.asarray(positions) ** 2))

    return fn


# ---------------------------------------------------------------------------- cache


def test_geometry_key_invariant_to_rounding_and_sensitive_to_changes():
    z, x = methane()
    k = E.geometry_key(z, x, SETTINGS)
    assert E.geometry_key(list(z), x.copy() + 1e-9, SETTINGS) == k  # below the 1e-6 Å rounding
    assert E.geometry_key(z, np.where(x == 0, -0.0, x), SETTINGS) == k  # -0.0 is 0.0
    moved = x.copy()
    moved[2, 1] += 1e-4
    assert E.geometry_key(z, moved, SETTINGS) != k
    assert E.geometry_key(z, x, {"level": "other"}) != k
    assert E.geometry_key(z[[0, 2, 1, 3, 4]], x[[0, 2, 1, 3, 4]], SETTINGS) != k  # atom order matters
    assert E.geometry_key(np.array([6, 1, 1, 1, 9]), x, SETTINGS) != k
    with pytest.raises(ValueError):
        E.geometry_key(z, x[:4], SETTINGS)


def test_cache_avoids_recomputation_and_survives_a_new_process(tmp_path):
    z, x = methane()
    path = tmp_path / "cache.jsonl"
    calls = []
    jobs = [(z, x, {"what": "ref"}), (z, x + 0.1, {"what": "a"}), (z, x.copy(), {"what": "dup"})]
    first = E.cached_energies(jobs, fake_energy(calls), E.EnergyCache(path), SETTINGS)
    assert len(calls) == 2  # the duplicate geometry is computed once
    assert len(path.read_text().splitlines()) == 2  # appended as computed

    cache = E.EnergyCache(path)  # a second run: everything from the file
    again = E.cached_energies(jobs + [(z, x - 0.2, {})], fake_energy(calls), cache, SETTINGS)
    assert len(calls) == 3 and cache.last == {"reused": 2, "computed": 1}
    assert {k: again[k] for k in first} == first

    # another process reads the same energies back
    key = E.geometry_key(z, x + 0.1, SETTINGS)
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('energies', sys.argv[2]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "  # the module alone: no torch import
            f"print(repr(m.EnergyCache(sys.argv[1]).get({key!r})))")
    out = subprocess.run([sys.executable, "-c", code, str(path), E.__file__], capture_output=True, text=True, check=True)
    assert float(out.stdout) == first[key]


def test_cache_matches_a_geometry_moved_by_float_noise_only(tmp_path):
    # the same structure relaxed by another version/thread count differs by ~1e-7 Å: enough to
    # cross the key's 1e-6 Å rounding, not enough to change an energy
    z, x = methane()
    x = x.copy()
    x[1, 0] = 0.6290005  # on a rounding edge of the key
    path = tmp_path / "cache.jsonl"
    calls = []
    E.cached_energies([(z, x, {})], fake_energy(calls), E.EnergyCache(path), SETTINGS)
    noisy = x.copy()
    noisy[1, 0] += 2e-7
    noisy[3, 2] -= 3e-7
    assert E.geometry_key(z, noisy, SETTINGS) != E.geometry_key(z, x, SETTINGS)  # the key alone misses
    cache = E.EnergyCache(path)
    again = E.cached_energies([(z, noisy, {})], fake_energy(calls), cache, SETTINGS)
    assert len(calls) == 1 and cache.last == {"reused": 1, "computed": 0}
    assert list(again.values()) == [fake_energy([])(z, x)]
    assert list(again) == [E.geometry_key(z, noisy, SETTINGS)]  # answered under the query's own key

    # a real move (1e-4 Å), another level of theory or other atoms: computed, never matched
    moved = x.copy()
    moved[2, 1] += 1e-4
    E.cached_energies([(z, moved, {})], fake_energy(calls), cache, SETTINGS)
    E.cached_energies([(z, noisy, {})], fake_energy(calls), cache, {"level": "other"})
    E.cached_energies([(np.array([6, 1, 1, 1, 9]), noisy, {})], fake_energy(calls), cache, SETTINGS)
    assert len(calls) == 4 and cache.last == {"reused": 0, "computed": 1}

    # lines written before positions were stored still match by key
    old = tmp_path / "old.jsonl"
    E.EnergyCache(old).put(E.geometry_key(z, x, SETTINGS), -40.5)
    assert E.EnergyCache(old).find(E.geometry_key(z, x, SETTINGS)) == -40.5
    assert E.EnergyCache(old).find(E.geometry_key(z, noisy, SETTINGS), E.geometry_group(z, SETTINGS), noisy) is None


def test_cache_keeps_failures_and_ignores_a_cut_off_line(tmp_path):
    z, x = methane()
    path = tmp_path / "cache.jsonl"
    calls = []

    def scf_fails(numbers, positions):
        calls.append(1)
        raise RuntimeError("PySCF SCF did not converge")

    e = E.cached_energies([(z, x, {})], scf_fails, E.EnergyCache(path), SETTINGS)
    assert math.isnan(e[E.geometry_key(z, x, SETTINGS)])
    rec = json.loads(path.read_text())
    assert rec["energy"] is None and "SCF" in rec["error"]
    with open(path, "a") as f:
        f.write('{"key": "abc", "ener')  # an interrupted write
    cache = E.EnergyCache(path)
    assert len(cache) == 1 and math.isnan(cache.get(E.geometry_key(z, x, SETTINGS)))
    E.cached_energies([(z, x, {})], scf_fails, cache, SETTINGS)
    assert len(calls) == 1  # a stored failure is not retried


def test_benchmark_dft_resumes_from_its_cache_file(tmp_path, monkeypatch):
    """A second run with the same --dft-cache computes no single point and gives the same ΔE."""
    from morered.evaluation import benchmark as B

    calls = []
    monkeypatch.setattr(E, "dft_energy", fake_energy(calls))
    kw = dict(n=2, methods=("identity", "mmff"), kinds=("diffused_50",), dft=1, progress=False, cache=False,
              dft_cache=tmp_path / "dft.jsonl", xtb_energy=True)
    a = B.run_relax_benchmark(out=tmp_path / "a", **kw)
    assert len(calls) == 3  # the reference and both results of the first molecule
    b = B.run_relax_benchmark(out=tmp_path / "b", **kw)
    assert len(calls) == 3
    assert [r.get("dE_dft") for r in a["rows"]] == [r.get("dE_dft") for r in b["rows"]]
    md = (tmp_path / "b" / "summary.md").read_text()
    assert "0 single points computed, 3 reused" in md
    # the screen (here GFN2-xTB) is compared with DFT on the structures that have both
    assert "## How well the cheap energies track the DFT ΔE" in md
    track = json.loads((tmp_path / "b" / "summary.json").read_text())["tracking"]
    assert {(t["screen"], t["kind"], t["n"]) for t in track} == {  # relaxed: mmff only; + inputs: identity too
        ("dE_xtb", "diffused_50", 1), ("dE_xtb", "all", 1), ("dE_xtb", "all + inputs", 2)}
    assert (tmp_path / "b" / "energies_dE_dft.png").exists()


# ---------------------------------------------------------------------------- statistics


def test_energy_stats_on_a_hand_made_array():
    v = np.array([0.5, -0.2, 2.0, 3.0, -4.0, 0.9, 10.0, 1.0, 0.0, 6.0])
    s = energy_stats(v)
    assert s["n"] == 10
    assert s["median"] == pytest.approx(np.median(v))
    assert s["q1"] == pytest.approx(np.quantile(v, 0.25)) and s["q3"] == pytest.approx(np.quantile(v, 0.75))
    assert s["within_1_pct"] == pytest.approx(50.0)  # 0.5, -0.2, 0.9, 1.0, 0.0
    assert s["p90_abs"] == pytest.approx(np.quantile(np.abs(v), 0.9)) and s["max_abs"] == 10.0
    # a failure (inf) and an energy that could not be computed (NaN) count in n, never as within
    f = energy_stats(np.r_[v, np.inf, np.inf, np.nan])
    assert f["n"] == 13 and f["within_1_pct"] == pytest.approx(500 / 13) and f["max_abs"] == math.inf
    assert f["p90_abs"] == math.inf  # 2 failures in 12 energies: the 90th percentile is a failure
    assert f["median"] == pytest.approx(np.median(np.r_[v, 1e300, 1e300]))


def test_energy_raised_is_the_failure_by_energy():
    # inputs (identity) at +10, +5, +2, none; results: lowered, raised, failed (inf), no input energy
    inp = [{"method": "identity", "kind": "etkdg", "index": i, "dE_ani1x": e} for i, e in enumerate([10.0, 5.0, 2.0, None])]
    res = [{"method": "jt", "kind": "etkdg", "index": i, "dE_ani1x": e} for i, e in enumerate([1.0, 6.0, math.inf, 0.5])]
    other = [{"method": "jt", "kind": "xtb_min", "index": 0, "dE_ani1x": 9.0}]  # no identity row of its kind
    s = {(r["method"], r["kind"]): r for r in summarize(inp + res + other)}
    # three results have an input energy: one lowered, one raised, one failed -> 2 of 3 raised
    assert s[("jt", "etkdg")]["dE_ani1x_raised_pct"] == pytest.approx(200 / 3)
    assert "dE_ani1x_raised_pct" not in s[("identity", "etkdg")]
    assert math.isnan(s[("jt", "xtb_min")]["dE_ani1x_raised_pct"])
    md = summary_markdown(list(s.values()))
    assert "% raised" in md and "| 66.7 |" in md


def test_tracking_measures_agreement():
    b = np.array([0.0, 1.0, 2.0, 5.0, 9.0, np.nan])
    t = tracking(2 * b + 1, b)
    assert t["n"] == 5 and t["pearson"] == pytest.approx(1.0) and t["spearman"] == pytest.approx(1.0)
    assert t["mae"] == pytest.approx(np.mean(b[:5] + 1))
    t = tracking(-b, b)
    assert t["spearman"] == pytest.approx(-1.0)
    t = tracking(np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]))  # ties get the mean rank
    assert t["spearman"] == pytest.approx(np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])


# ---------------------------------------------------------------------------- bonds and angles


def test_bond_types_and_graph():
    assert [bond_type(*p) for p in ((1, 6), (6, 6), (7, 6), (8, 1), (7, 1), (9, 6))] == [
        "C-H", "C-C", "C-N", "O-H", "N-H", "C-F"]
    z, x = methane()
    assert sorted(map(tuple, bond_graph(z, x))) == [(0, 1), (0, 2), (0, 3), (0, 4)]  # no H-H bonds


def test_geometry_errors_zero_for_the_reference_positive_for_a_stretched_bond():
    z, x = methane()
    zero = geometry_errors(z, x, x + 3.0)  # translation: no error
    assert zero == {"bond_err": 0.0, "angle_err": pytest.approx(0.0, abs=1e-6), "bond_err_C-H": 0.0}
    y = x.copy()
    y[1] *= (np.linalg.norm(x[1]) + 0.1) / np.linalg.norm(x[1])  # one C-H 0.1 Å longer, along the bond
    e = geometry_errors(z, x, y)
    assert e["bond_err_C-H"] == pytest.approx(0.1 / 4) and e["bond_err"] == pytest.approx(0.1 / 4)
    assert e["angle_err"] == pytest.approx(0.0, abs=1e-6)  # the direction is kept
    bent = x.copy()
    bent[1] = np.linalg.norm(x[1]) * np.array([0.0, 0.6, 0.8])
    assert geometry_errors(z, x, bent)["angle_err"] > 1.0
    failed = geometry_errors(z, x, None)
    assert failed["bond_err"] == math.inf and failed["bond_err_C-H"] == math.inf


# ---------------------------------------------------------------------------- input kinds


@pytest.fixture(scope="module")
def small(qm9):
    """NH3, H2O and two heavier QM9 molecules (ids 2, 3, 120, 500)."""
    return Structures.from_molecules(qm9.select_ids([2, 3, 120, 500]))


def test_kind_names():
    for k in ("etkdg", "normal_mode_1500", "normal_mode_300", "normal_mode", "diffused_100", "xtb_min"):
        assert is_kind(k), k
    for k in ("normal_mode_", "normal_mode_hot", "etkdg_2", "normal_mode_0"):
        assert not is_kind(k), k
    assert input_settings("normal_mode_300", seed=2) == input_settings("normal_mode", seed=2, temperature=300)
    assert input_settings("normal_mode_1500")["temperature"] == 1500.0


def test_normal_mode_1500_displaces_more_than_300(small):
    sub = Structures(small.ids[:2], small.numbers[:2], small.positions[:2])
    cold = make_inputs("normal_mode_300", sub, seed=1, cache=False)
    hot = make_inputs("normal_mode_1500", sub, seed=1, cache=False)
    plain = make_inputs("normal_mode", sub, seed=1, temperature=300, cache=False)
    for c, h, p, r in zip(cold.positions, hot.positions, plain.positions, sub.positions):
        np.testing.assert_array_equal(c, p)
        assert kabsch_rmsd(h, r) == pytest.approx(np.sqrt(5) * kabsch_rmsd(c, r), rel=0.05)
        assert kabsch_rmsd(h, r) > kabsch_rmsd(c, r) > 0.005
    assert hot.kind == "normal_mode_1500"


def test_etkdg_keeps_atoms_and_is_seeded(small):
    a = make_inputs("etkdg", small, seed=3, cache=False)
    b = make_inputs("etkdg", small, seed=3, cache=False)
    c = make_inputs("etkdg", small, seed=4, cache=False)
    assert a.kind == "etkdg" and list(a.ids) == list(small.ids)
    assert all(e is None for e in a.errors), a.errors
    for k, (xa, xb, xc, z, za) in enumerate(zip(a.positions, b.positions, c.positions, small.numbers, a.numbers)):
        np.testing.assert_array_equal(za, z)  # element list and atom order kept
        np.testing.assert_array_equal(xa, xb)  # deterministic per (seed, id)
        if len(z) > 4:
            assert not np.allclose(xa, xc)  # another seed, another embedding
        # a real embedding of the same molecule: every reference bond is still a bond
        err = geometry_errors(z, small.positions[k], xa)
        assert err["bond_err"] < 0.1 and err["angle_err"] < 10.0


def test_etkdg_failure_is_recorded_per_structure(small):
    he = Structures(np.array([7, 2]), [np.array([2, 2]), small.numbers[1]],
                    [np.array([[0, 0, 0], [0, 0, 3.0]]), small.positions[1]])
    out = make_inputs("etkdg", he, cache=False)
    assert out.positions[0] is None and out.errors[0]
    assert out.positions[1] is not None and out.errors[1] is None


# ---------------------------------------------------------------------------- command line


def test_cli_screen_ani1x_end_to_end(tmp_path, capsys):
    pytest.importorskip("torchani")
    from morered.cli import main

    rc = main(["benchmark", "relax", "--n", "2", "--methods", "identity,mmff", "--kinds", "diffused_50,etkdg",
               "--screen", "ani1x", "--out", str(tmp_path), "--quiet", "--no-cache"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ANI-1x (torchani 2.0), kcal/mol" in out and "p90 abs(ΔE)" in out
    assert "## Bond lengths and angles vs the reference" in out
    assert (tmp_path / "energies_dE_ani1x.png").stat().st_size > 0
    rows = [r for r in __import__("csv").DictReader(open(tmp_path / "results.csv"))]
    assert len(rows) == 2 * 2 * 2 and all(r["dE_ani1x"] != "" for r in rows)
    ident = [float(r["dE_ani1x"]) for r in rows if r["method"] == "identity" and r["kind"] == "diffused_50"]
    assert min(ident) > 10  # t = 50 noise costs tens of kcal/mol
    assert all(r["bond_err"] != "" for r in rows)


def test_cli_refuses_a_missing_screen_and_unknown_kinds(tmp_path, capsys, monkeypatch):
    from morered.cli import main
    from morered.evaluation import peers

    monkeypatch.setattr(peers, "peer_available", lambda m: (False, f"{m}: torchani is not installed (pip install -e .[peers])"))
    assert main(["benchmark", "relax", "--screen", "ani1x", "--out", str(tmp_path)]) == 2
    assert "pip install -e .[peers]" in capsys.readouterr().err
    assert main(["benchmark", "relax", "--screen", "ani2x", "--out", str(tmp_path)]) == 2
    assert "--screen" in capsys.readouterr().err
    assert main(["benchmark", "relax", "--kinds", "normal_mode_hot", "--out", str(tmp_path)]) == 2
    assert "normal_mode_<T>" in capsys.readouterr().err
