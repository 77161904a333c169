"""Generation from noise and its metrics: EDM stability, RDKit validity, the CLI end to end."""

import numpy as np
import pytest

from morered.errors import OptionError
from morered.generation.generate import (generate, generation_options, initial_noise, parse_composition)
from morered.generation.metrics import (bond_orders, check_molecule, check_molecules, summarize)
from morered.sampling.samplers import SamplerOptions

# methane: C at the origin, H at 1.09 Å on the tetrahedron's corners
_TET = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / np.sqrt(3)
METHANE = ([6, 1, 1, 1, 1], np.vstack([[0, 0, 0], 1.09 * _TET]))


def _qm9_sample(qm9, n=300):
    from morered.data.qm9 import split_ids

    mols = qm9.select_ids(split_ids(qm9)["test"][:n])
    return [(mols.molecule(k)[1], mols.molecule(k)[0].astype(np.float64)) for k in range(len(mols))]


def test_qm9_reference_geometries_score_high(qm9):
    m = summarize(check_molecules(_qm9_sample(qm9)))
    # published for all of QM9 under EDM's tables: 99.0 / 95.2 / 97.7 %
    assert m.atom_stability > 0.98
    assert m.molecule_stability > 0.90
    assert m.validity > 0.93 and m.validity_edm >= m.validity
    assert m.uniqueness > 0.95


def test_broken_molecules_fail(qm9):
    sample = _qm9_sample(qm9, 100)
    stretched = summarize(check_molecules([(z, 1.4 * x) for z, x in sample]))  # every bond 40 % longer
    assert stretched.validity < 0.05 and stretched.molecule_stability < 0.05
    rng = np.random.default_rng(0)
    noise = summarize(check_molecules([(z, rng.normal(size=x.shape)) for z, x in sample]))
    assert noise.validity < 0.1 and noise.atom_stability < 0.6


def test_bond_orders_follow_edm_tables():
    pair = lambda d: bond_orders([6, 6], [[0, 0, 0], [d, 0, 0]])[0, 1]  # noqa: E731
    # C-C: single < 154+10 pm, double < 134+5, triple < 120+3
    assert [pair(1.54), pair(1.63), pair(1.65), pair(1.38), pair(1.40), pair(1.22), pair(1.24)] == [1, 1, 0, 2, 1, 3, 2]
    assert bond_orders([1, 1], [[0, 0, 0], [0.74, 0, 0]])[0, 1] == 1  # H-H has no double entry


def test_methane_is_stable_and_valid():
    c = check_molecule(*METHANE)
    assert c.stable and c.n_stable_atoms == 5 and c.valid and c.smiles == "C"


def test_stretched_bond_breaks_stability_and_connectivity():
    z, x = METHANE
    x = x.copy()
    x[1] = 1.30 * _TET[0]  # C-H 130 pm > 109 + 10
    c = check_molecule(z, x)
    assert not c.stable and c.n_stable_atoms == 3  # C (3 bonds) and the lost H are unstable
    assert not c.valid and c.valid_edm and c.n_fragments == 2  # EDM's rule keeps the largest fragment


def test_pentavalent_carbon_is_unstable_and_invalid():
    z, x = METHANE
    c = check_molecule(z + [1], np.vstack([x, [[0.0, 0.0, 1.09]]]))
    assert not c.stable and not c.valid and not c.valid_edm
    assert "valence" in c.reason


def test_parse_composition():
    z = parse_composition("C7H10O2", elements={1, 6, 7, 8, 9}, max_atoms=29)
    assert sorted(z.tolist()) == sorted([6] * 7 + [1] * 10 + [8] * 2) and z[0] == 6 and z[-1] == 1
    assert sorted(parse_composition("CH3CH2OH").tolist()) == sorted([6, 6, 8] + [1] * 6)
    for bad in ["Xy2", "C0H4", "C500", "C", "", "c2h6", "S2", "C-1"]:
        with pytest.raises(OptionError):
            parse_composition(bad, elements={1, 6, 7, 8, 9}, max_atoms=29)


def test_generation_does_not_inherit_relaxation_stopping_rules():
    o = generation_options("jt", 1000, max_steps=700)
    assert o.stochastic and o.patience == 0 and o.t_eq == -1 and o.t_conv == 10 and o.max_steps == 700
    assert o.tail_t == 0 and o.jump == 0.0 and o.eq_tail_t == 0  # relaxation's tails and DDIM jumps neither
    # generation's own rule: a hovering run is re-noised (relaxation never is)
    assert (o.restart_patience, o.restart_t, o.max_restarts) == (200, 300, 2)
    assert SamplerOptions().restart_patience == 0
    d = generation_options("ddpm", 1000, max_steps=10)
    assert d.t_start == 1000 and d.max_steps == 1000  # the fixed schedule always runs all T steps
    assert d.restart_patience == 0  # and has no predicted step to hover on


def test_initial_noise_is_centred_and_independent_of_the_list_around_it():
    a = initial_noise([np.array([6, 1, 1]), np.array([8, 1])], seed=3)
    b = initial_noise([np.array([6, 1, 1])], seed=3)
    assert np.allclose(a[0][1], b[0][1]) and np.allclose(a[1][1].mean(0), 0)
    assert not np.allclose(initial_noise([np.array([6, 1, 1])], seed=4)[0][1], b[0][1])


def test_generation_is_deterministic_for_a_seed(tiny_model_path):
    comps = [parse_composition("C3H6O"), parse_composition("C2H7N")]
    run = lambda seed: generate(comps, "jt", str(tiny_model_path), max_steps=4, seed=seed, snapshots=[2])  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(a, b))
    assert not np.allclose(a[0].positions, c[0].positions)
    assert a[0].steps <= 4 and set(a[0].snapshots) == {2}
    assert np.isfinite(a[0].positions).all() and np.allclose(a[0].positions.mean(0), 0, atol=1e-6)



def test_attempts_regenerate_only_invalid_results_from_fresh_noise(tiny_model_path, monkeypatch):
    import morered.generation.generate as G

    comps = [parse_composition("CH2O"), parse_composition("C3H6O")]
    monkeypatch.setattr(G, "_valid", lambda g: len(g.numbers) == 4)  # CH2O "valid", C3H6O never
    kw = dict(max_steps=3, seed=2, relax=False)
    once = generate(comps, "jt", str(tiny_model_path), **kw)
    three = generate(comps, "jt", str(tiny_model_path), attempts=3, **kw)
    again = generate(comps, "jt", str(tiny_model_path), attempts=3, **kw)
    assert [g.attempts for g in once] == [1, 1] and [g.attempts for g in three] == [1, 3]
    assert np.array_equal(three[0].positions, once[0].positions)  # a valid result is kept
    assert not np.allclose(three[1].positions, once[1].positions)  # the invalid one: fresh noise
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(three, again))  # same seed, same output
    with pytest.raises(OptionError, match="attempts"):
        generate(comps, "jt", str(tiny_model_path), attempts=0, **kw)


def test_unconverged_runs_are_run_again_from_fresh_noise(tiny_model_path, monkeypatch):
    import morered.generation.generate as G

    real, calls = G.adaptive, []

    def sampler(model, mols, schedule, opts, callback):  # CH2O converges, C3H6O never does
        res = real(model, mols, schedule, opts, callback)
        calls.append(len(mols))
        for (z, _), r in zip(mols, res):
            r.converged, r.steps = len(z) == 4, 10 * len(calls)  # the untrained head stops at once
        return res

    monkeypatch.setattr(G, "adaptive", sampler)
    comps = [parse_composition("CH2O"), parse_composition("C3H6O")]
    kw = dict(max_steps=3, seed=2, relax=False)
    off = generate(comps, "jt", str(tiny_model_path), retries=0, **kw)
    calls.clear()
    two = generate(comps, "jt", str(tiny_model_path), retries=2, **kw)
    assert calls == [2, 1, 1]  # only the unconverged one is run again
    assert [g.retries for g in off] == [0, 0] and [g.retries for g in two] == [0, 2]
    assert [g.steps_all for g in off] == [g.steps for g in off]
    assert np.array_equal(two[0].positions, off[0].positions) and two[0].steps_all == 10  # kept
    assert two[1].steps == 30 and two[1].steps_all == 10 + 20 + 30  # every run's steps count
    # the unconverged one: the last fresh-noise run, exactly what its documented seed gives
    # (benchmarks/retry_unconverged.py relies on that), and every run's steps count
    runs = [generate([comps[1]], "jt", str(tiny_model_path), retries=0, **{**kw, "seed": G.retry_seed(2, r)})[0]
            for r in (1, 2)]
    assert not np.allclose(two[1].positions, off[1].positions)
    assert np.array_equal(two[1].positions, runs[1].positions) and not two[1].converged
    assert len({G.retry_seed(2, r) for r in (1, 2)} | {2}) == 3
    with pytest.raises(OptionError, match="retries"):
        generate(comps, "jt", str(tiny_model_path), retries=-1, **kw)


def test_final_relaxation_starts_from_the_unrelaxed_generation(tiny_model_path):
    comps = [parse_composition("C3H6O")]  # (the untrained model's C2H7N has overlapping atoms: next test)
    kw = dict(max_steps=4, seed=0)
    plain = generate(comps, "jt", str(tiny_model_path), relax=False, trajectory=True, **kw)
    done = generate(comps, "jt", str(tiny_model_path), relax=True, trajectory=True, **kw)
    for p, d in zip(plain, done):
        assert p.unrelaxed is None and p.relax_steps == 0
        # the same generation (same seed), then relaxed from where it ended
        assert np.array_equal(d.unrelaxed, p.positions) and d.steps == p.steps
        assert d.relax_steps >= 1 and d.relax_error is None
        assert not np.allclose(d.positions, d.unrelaxed) and np.allclose(d.positions.mean(0), 0, atol=1e-6)
        # the trajectory runs on through the relaxation, one step label per frame
        n_gen = len(p.trajectory)
        assert len(d.trajectory) > n_gen and len(d.trajectory) == len(d.trajectory_t)
        assert all(np.allclose(a, b) for a, b in zip(d.trajectory[:n_gen], p.trajectory))
        assert np.allclose(d.trajectory[n_gen - 1], d.unrelaxed) and np.allclose(d.trajectory[-1], d.positions)


def test_python_api_returns_atoms_for_every_requested_molecule(tiny_model_path):
    import morered
    from ase import Atoms

    methane = Atoms("CH4", positions=np.vstack([[0, 0, 0], 1.09 * _TET]))
    out = morered.generate(["C3H6O", [8, 1, 1], methane], n=2, model=str(tiny_model_path), max_steps=3)
    assert [a.get_chemical_formula() for a in out] == ["C3H6O"] * 2 + ["H2O"] * 2 + ["CH4"] * 2
    for a in out:
        assert {"morered_valid", "morered_stable", "morered_steps", "morered_relax_steps"} <= set(a.info)
        assert ("morered_smiles" in a.info) == a.info["morered_valid"] and a.info["morered_steps"] <= 3
    one = morered.generate("C2H6", model=str(tiny_model_path), max_steps=3, relax=False)
    assert len(one) == 1 and one[0].info["morered_relax_steps"] == 0
    with pytest.raises(OptionError, match="C0"):
        morered.generate("C0H4", model=str(tiny_model_path))
    with pytest.raises(OptionError, match="n = 0"):
        morered.generate("CH4", n=0, model=str(tiny_model_path))


def test_a_structure_the_relaxation_refuses_is_kept_unrelaxed_with_the_reason(tiny_model_path):
    from morered.generation.generate import Generated, relax_generated

    z = np.array([6, 8, 1, 1])
    ok = np.array([[0.0, 0, 0], [1.2, 0, 0], [-0.6, 0.9, 0], [-0.6, -0.9, 0]])
    clash = ok.copy()
    clash[1] = clash[0] + 0.05  # two atoms on top of each other
    gen = [Generated(z, clash.copy(), 10, True, 0), Generated(z, ok.copy(), 10, True, 0),
           Generated(z, None, 3, False, 500, error="non-finite")]
    relax_generated(gen, str(tiny_model_path), "jt")
    assert "overlapping" in gen[0].relax_error and np.array_equal(gen[0].positions, clash)
    assert gen[0].unrelaxed is None and gen[0].relax_steps == 0
    assert gen[1].relax_error is None and gen[1].relax_steps >= 1 and np.array_equal(gen[1].unrelaxed, ok)
    assert gen[2].positions is None and gen[2].relax_error is None  # nothing to relax


def test_generation_benchmark_scores_each_variant_as_generated_and_relaxed(tmp_path, tiny_model_path):
    import csv
    import json

    from morered.generation.benchmark import run_generation_benchmark

    res = run_generation_benchmark(3, tmp_path, variants=("jt",), max_steps=3, sweep=(2,), model=str(tiny_model_path),
                                   train_smiles=set(), progress=False)
    assert set(res["results"]) == {"jt", "jt+relax"}
    assert res["results"]["jt+relax"]["mean_relax_steps"] >= 1 and res["results"]["jt"]["molecules_per_s"] is None
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 3 and {"valid_unrelaxed", "relax_steps", "retries", "steps_all"} <= set(rows[0])
    assert res["results"]["jt"]["mean_steps"] == np.mean([int(r["steps_all"]) for r in rows])  # every run counts
    assert "then relaxed" in (tmp_path / "summary.md").read_text()
    meta = json.loads((tmp_path / "summary.json").read_text())["meta"]
    assert meta["relax"] is True and meta["model"] == str(tiny_model_path) and meta["retries"] == 2
    assert meta["restart"] == {"patience": 200, "t": 300, "max_restarts": 2}  # the sampler rule it ran with
    assert "re-noised to t = 300 after 200 steps" in (tmp_path / "summary.md").read_text()
    # a run with a given model says so instead of "Shipped models"
    assert (tmp_path / "summary.md").read_text().splitlines()[2].startswith(f"Model {tiny_model_path};")
    assert (tmp_path / "validity_vs_max_steps.png").exists()


@pytest.mark.parametrize("ext", ["sdf", "extxyz", "db"])
def test_cli_generate_and_evaluate_round_trip(tmp_path, tiny_model_path, capsys, ext):
    from morered.cli.main import main
    from morered.io import read_structures

    out = tmp_path / f"gen.{ext}"
    rc = main(["generate", "--composition", "C3H6O", "-n", "2", "--composition", "CH4", "--max-steps", "3",
               "--model", str(tiny_model_path), "-o", str(out), "--no-progress", "--no-novelty",
               "--trajectory", str(tmp_path / "traj")])
    assert rc == 0
    line = capsys.readouterr().out
    assert "4 molecules (jt, relaxed, seed 0): valid" in line and "molecules/s" in line
    recs = read_structures(out)
    assert [r.atoms.get_chemical_formula() for r in recs] == ["C3H6O", "C3H6O", "CH4", "CH4"]
    for r in recs:
        info = r.atoms.info
        assert info["morered_steps"] <= 3 and ("morered_smiles" in info) == bool(info["morered_valid"])
        # a run not converged within --max-steps was run again (at most twice, the default)
        assert int(info["morered_retries"]) in (0, 1, 2)
        assert str(info["morered_converged"]) in ("True", "1") or int(info["morered_retries"]) == 2
    assert "run again from fresh noise (not converged within --max-steps)" in line
    assert len(list((tmp_path / "traj").glob("*.extxyz"))) == 4
    assert main(["evaluate", "generated", str(out), "--no-novelty"]) == 0
    assert "molecule_stability" in capsys.readouterr().out



def test_cli_generate_attempts_are_recorded_and_summarised(tmp_path, tiny_model_path, capsys):
    from morered.cli.main import main
    from morered.io import read_structures

    out = tmp_path / "gen.extxyz"
    assert main(["generate", "--composition", "C3H6O", "-n", "2", "--max-steps", "2", "--attempts", "2",
                 "--model", str(tiny_model_path), "-o", str(out), "--no-progress", "--no-novelty"]) == 0
    line = capsys.readouterr().out
    assert "up to 2 attempts: first attempt valid" in line
    recs = read_structures(out)
    for r in recs:  # an invalid result was generated twice, a valid one once
        assert r.atoms.info["morered_attempts"] == (1 if r.atoms.info["morered_valid"] else 2)
    assert main(["generate", "--composition", "C3H6O", "--attempts", "0", "--model", str(tiny_model_path),
                 "-o", str(tmp_path / "x.xyz"), "--no-progress"]) == 2


def test_cli_generate_threads(tmp_path, tiny_model_path):
    import torch

    from morered.cli.main import main

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["generate", "--composition", "CH4", "--max-steps", "2", "--threads", "1", "--no-relax",
                     "--model", str(tiny_model_path), "-o", str(tmp_path / "g.xyz"), "--no-progress",
                     "--no-novelty"]) == 0
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit) as e:  # argparse refuses a thread count below 1
            main(["generate", "--composition", "CH4", "--threads", "0", "-o", str(tmp_path / "h.xyz")])
        assert e.value.code == 2 and not (tmp_path / "h.xyz").exists()
    finally:
        torch.set_num_threads(before)


def test_cli_sdf_has_bonds_for_valid_molecules(tmp_path, qm9):
    from morered.cli.generate import write_generated
    from morered.generation.generate import Generated
    from morered.io import read_structures

    (z, x), = _qm9_sample(qm9, 1)
    z = np.asarray(z, dtype=np.int64)
    gen = [Generated(z, x, 5, True, 0), Generated(z, 1.5 * x, 5, True, 0)]
    checks = check_molecules([(g.numbers, g.positions) for g in gen])
    assert [c.valid for c in checks] == [True, False]
    out = tmp_path / "two.sdf"
    assert write_generated(out, gen, checks, "jt") == []
    recs = read_structures(out)
    assert recs[0].mol.GetNumBonds() > 0 and recs[1].mol.GetNumBonds() == 0
    assert str(recs[0].mol.GetProp("morered_valid")) == "True" and recs[0].mol.GetProp("morered_smiles") == checks[0].smiles
    assert np.allclose(recs[0].atoms.positions, x, atol=1e-4)


@pytest.mark.parametrize("args", [["--composition", "Xy2"], ["--composition", "C0H4"], ["--composition", "C500"],
                                  ["--composition", "C3H8", "-n", "0"], ["--from-test", "0"],
                                  ["--composition", "C3H8", "--restart-patience", "-1"],
                                  ["--composition", "C3H8", "--retries", "-1"]])
def test_cli_generate_refuses_bad_input(tmp_path, tiny_model_path, capsys, args):
    from morered.cli.main import main

    out = tmp_path / "g.xyz"
    assert main(["generate", *args, "--model", str(tiny_model_path), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given, variant, expected", [([], "jt", {"restart_patience": 200}),
                                                      (["--restart-patience", "0"], "jt", {"restart_patience": 0}),
                                                      ([], "ddpm", None)])
def test_cli_generate_passes_the_restart_rule_to_the_sampler(tmp_path, tiny_model_path, monkeypatch, given, variant,
                                                             expected):
    import morered.generation.generate as G
    from morered.cli.main import main

    seen = {}

    def fake_generate(comps, variant, model, **kw):
        seen.update(kw)
        raise SystemExit(0)  # the options are all this test needs

    monkeypatch.setattr(G, "generate", fake_generate)
    with pytest.raises(SystemExit):
        main(["generate", "--composition", "C3H8", "--variant", variant, "--model", str(tiny_model_path),
              "-o", str(tmp_path / "g.xyz"), "--no-progress", *given])
    assert seen["overrides"] == expected
