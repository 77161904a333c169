"""Evaluation layer: Kabsch RMSD on hand-made cases, ratio/failure logic, input generators,
baselines, energies and the report aggregation."""

import math

import numpy as np
import pytest

from morered.evaluation.inputs import (
    Structures,
    diffused,
    make_inputs,
    mmff_min,
    normal_mode,
    normal_modes,
    read_structures,
    read_user_inputs,
    xtb_hessian,
    xtb_min,
)
from morered.evaluation.report import quantiles, summarize, write_csv, read_csv
from morered.evaluation.rmsd import heavy_atoms, is_failure, kabsch_align, kabsch_rmsd, rmsd_ratio


def rotation(rng, det=1.0):
    """Random orthogonal matrix from QR with a fixed determinant sign (float64)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


def square_with_pucker(d):
    """Square of side 2 in the xy plane, and the same with atoms moved ±d along z (alternating).

    The displacement keeps the centroid and is orthogonal to every rotation (the covariance
    stays diag(4, 4, 0)), so no superposition can reduce it: RMSD = sqrt(4 d² / 4) = d exactly.
    """
    ref = np.array([[1.0, 1, 0], [-1, -1, 0], [1, -1, 0], [-1, 1, 0]])
    x = ref + np.array([[0, 0, d], [0, 0, d], [0, 0, -d], [0, 0, -d]])
    return x, ref


# ---------------------------------------------------------------------------- RMSD


def test_rmsd_of_rigid_motion_is_zero():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(12, 3)) * 1.5
    for _ in range(5):
        x = ref @ rotation(rng).T + rng.normal(size=3) * 10
        assert kabsch_rmsd(x, ref) < 1e-10
        np.testing.assert_allclose(kabsch_align(x, ref), ref, atol=1e-10)


def test_reflection_is_not_a_rotation():
    """A mirror image of a chiral (non-planar) cloud cannot be superposed by a proper rotation."""
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(10, 3))
    mirrored = ref @ rotation(rng, det=-1.0).T
    assert kabsch_rmsd(mirrored, ref) > 0.1
    aligned = kabsch_align(mirrored, ref)
    # the fit is a proper rotation: the aligned copy is still a mirror image (same handedness test)
    vol = lambda p: np.linalg.det(np.stack([p[1] - p[0], p[2] - p[0], p[3] - p[0]]))  # noqa: E731
    assert np.sign(vol(aligned)) == -np.sign(vol(ref))


@pytest.mark.parametrize("d", [0.05, 0.3])
def test_known_displacement(d):
    x, ref = square_with_pucker(d)
    assert kabsch_rmsd(x, ref) == pytest.approx(d, rel=1e-12)
    # and the same after moving x rigidly
    rng = np.random.default_rng(2)
    assert kabsch_rmsd(x @ rotation(rng).T + 3.0, ref) == pytest.approx(d, rel=1e-10)


def test_one_atom_moved_in_a_line():
    """Atoms on a line along x, one moved by d along z: a planar problem, so the best proper
    rotation is about y (or the 180° flip about x, which gives the same).  Compare with a 1-D
    minimisation over that angle, and with the translation-only bound d sqrt(N-1) / N."""
    from scipy.optimize import minimize_scalar

    n, d = 4, 0.2
    ref = np.zeros((n, 3))
    ref[:, 0] = np.arange(n, dtype=float)
    x = ref.copy()
    x[0, 2] = d
    p, q = x - x.mean(0), ref - ref.mean(0)

    def rmsd_at(a):
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        return np.sqrt(((p @ rot.T - q) ** 2).sum(1).mean())

    best = minimize_scalar(rmsd_at, bounds=(-0.5, 0.5), method="bounded", options={"xatol": 1e-12}).fun
    assert kabsch_rmsd(x, ref) == pytest.approx(best, abs=1e-9)
    assert rmsd_at(0.0) == pytest.approx(d * math.sqrt(n - 1) / n)  # translation only
    assert kabsch_rmsd(x, ref) < rmsd_at(0.0)


def test_heavy_atom_mask():
    """Hydrogens moved, heavy atoms not: heavy-atom RMSD 0, all-atom RMSD > 0."""
    x, ref = square_with_pucker(0.0)
    numbers = np.array([6, 6, 6, 6, 1, 1])
    ref = np.vstack([ref, [[2.0, 2.0, 0.0], [-2.0, -2.0, 0.0]]])
    x = ref.copy()
    x[4] += [0.0, 0.0, 0.4]
    x[5] += [0.0, 0.0, -0.4]
    heavy = heavy_atoms(numbers)
    assert heavy.tolist() == [True] * 4 + [False] * 2
    assert kabsch_rmsd(x, ref, heavy) < 1e-12
    assert kabsch_rmsd(x, ref) > 0.1
    # the mask selects the atoms of the fit and of the RMSD: heavy-only puckering shows up
    x2, ref2 = square_with_pucker(0.1)
    x2 = np.vstack([x2, ref[4:]])
    assert kabsch_rmsd(x2, ref, heavy) == pytest.approx(0.1, rel=1e-10)


def test_rmsd_rejects_bad_shapes():
    with pytest.raises(ValueError):
        kabsch_rmsd(np.zeros((3, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        kabsch_rmsd(np.zeros((3, 3)), np.zeros((3, 3)), np.zeros(3, bool))


def test_ratio_and_failure():
    assert rmsd_ratio(0.05, 0.1) == pytest.approx(0.5)
    assert rmsd_ratio(None, 0.1) == math.inf
    assert rmsd_ratio(math.nan, 0.1) == math.inf
    assert rmsd_ratio(math.inf, 0.1) == math.inf
    assert rmsd_ratio(0.0, 0.0) == 1.0
    assert rmsd_ratio(0.1, 0.0) == math.inf
    assert not is_failure(0.5)
    assert not is_failure(1.0)  # the paper's definition is strict: ratio > 1
    assert is_failure(1.0 + 1e-9)
    assert not is_failure(1.0 + 1e-9, tol=1e-6)
    assert is_failure(1.01, tol=1e-6)
    assert is_failure(math.inf) and is_failure(math.nan)


def test_score_counts_errors_as_failures():
    from morered.evaluation.benchmark import score

    x, ref = square_with_pucker(0.2)
    z = np.array([6, 6, 6, 6])
    s = score(z, x, ref, None)
    assert s["rmsd_in"] == pytest.approx(0.2)
    assert s["rmsd"] == math.inf and s["ratio"] == math.inf and s["failure"]
    s = score(z, x, ref, ref)
    assert s["rmsd"] < 1e-12 and s["ratio"] < 1e-10 and not s["failure"]
    s = score(z, x, ref, x)  # the identity: ratio exactly 1, not a failure
    assert s["ratio"] == 1.0 and not s["failure"]


# ---------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def refs(test_molecules):
    return Structures.from_molecules(test_molecules.subset(range(4)))


@pytest.fixture(scope="module")
def small_refs(qm9):
    """CH4, NH3, H2O, C2H2 (linear), HCN (linear): QM9 indices 1-5."""
    return Structures.from_molecules(qm9.select_ids([1, 2, 3, 4, 5]))


def assert_same_molecules(a: Structures, b: Structures):
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.ids, b.ids)
    for za, zb, xa in zip(a.numbers, b.numbers, a.positions):
        np.testing.assert_array_equal(za, zb)
        assert xa is not None and xa.shape == (len(zb), 3) and xa.dtype == np.float64


def test_diffused_deterministic_and_ordered(refs):
    a, b = diffused(refs, 100, seed=3), diffused(refs, 100, seed=3)
    assert_same_molecules(a, refs)
    for xa, xb in zip(a.positions, b.positions):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_allclose(xa.mean(0), 0.0, atol=1e-12)  # centred
    c = diffused(refs, 100, seed=4)
    assert not np.allclose(a.positions[0], c.positions[0])
    # a molecule's input does not depend on the rest of the set
    sub = Structures(refs.ids[2:3], refs.numbers[2:3], refs.positions[2:3])
    np.testing.assert_array_equal(diffused(sub, 100, seed=3).positions[0], a.positions[2])


def test_diffused_size_follows_schedule(qm9):
    """Noise of std sigma_t = sqrt(1 - alpha_bar_t) per coordinate leaves, after Kabsch removes
    the 6 rigid degrees of freedom, n RMSD² ≈ sigma_t² (3n - 6) (about 0.12, 0.23, 0.34 Å at
    t = 50, 100, 150 for an 18-atom molecule).  Pooled over 40 test molecules (~1,000 degrees
    of freedom, about 2 % statistical error)."""
    from morered.data.qm9 import split_ids
    from morered.diffusion.schedule import NoiseSchedule

    refs40 = Structures.from_molecules(qm9.select_ids(split_ids(qm9)["test"][:40]))
    ab = NoiseSchedule("polynomial", 1000).alpha_bar.numpy()
    dof = sum(3 * len(z) - 6 for z in refs40.numbers)
    for t in (50, 100, 150):
        x = diffused(refs40, t, seed=0)
        ss = sum(len(r) * kabsch_rmsd(p, r) ** 2 for p, r in zip(x.positions, refs40.positions))
        assert ss / ((1 - ab[t]) * dof) == pytest.approx(1.0, abs=0.1)


def test_normal_modes_physics(small_refs):
    """3n-6 modes (3n-5 linear), positive wavenumbers in the usual range, orthogonal to rigid motions."""
    from morered.evaluation.inputs import _EV_A2_AMU_TO_CM1

    for k, n_modes in ((2, 3), (3, 7)):  # H2O bent, C2H2 linear
        z, x = small_refs.numbers[k], small_refs.positions[k]
        w, modes = normal_modes(z, x, xtb_hessian(z, x))
        assert len(w) == n_modes
        nu = np.sqrt(np.abs(w)) * _EV_A2_AMU_TO_CM1
        assert (w > 0).all() and nu.min() > 300 and nu.max() < 4000
        np.testing.assert_allclose(modes.T @ modes, np.eye(n_modes), atol=1e-10)


def test_normal_mode_inputs_deterministic(small_refs):
    sub = Structures(small_refs.ids[:3], small_refs.numbers[:3], small_refs.positions[:3])
    a = normal_mode(sub, temperature=300, seed=1)
    b = normal_mode(sub, temperature=300, seed=1)
    assert_same_molecules(a, sub)
    for xa, xb, r in zip(a.positions, b.positions, sub.positions):
        np.testing.assert_array_equal(xa, xb)
        assert 0.005 < kabsch_rmsd(xa, r) < 0.5
    hot = normal_mode(sub, temperature=1200, seed=1)
    # same random normal coordinates scaled by sqrt(T): twice the displacement at 4x temperature
    for xh, xa, r in zip(hot.positions, a.positions, sub.positions):
        assert kabsch_rmsd(xh, r) == pytest.approx(2 * kabsch_rmsd(xa, r), rel=0.05)


def test_minima_inputs(small_refs):
    sub = Structures(small_refs.ids[:3], small_refs.numbers[:3], small_refs.positions[:3])
    for gen in (mmff_min, xtb_min):
        m = gen(sub)
        assert_same_molecules(m, sub)
        for x, r in zip(m.positions, sub.positions):
            assert kabsch_rmsd(x, r) < 0.05  # small molecules: minima close to the DFT ones


def test_generator_failure_is_recorded():
    """A molecule MMFF94 cannot type gets no input and a reason, and the others still do."""
    he2 = Structures(np.array([7, 8]), [np.array([2, 2]), np.array([8, 1, 1])],
                     [np.array([[0, 0, 0], [0, 0, 1.5]]), np.array([[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])])
    m = mmff_min(he2)
    assert m.positions[0] is None and "MMFF94" in m.errors[0]
    assert m.positions[1] is not None and m.errors[1] is None


def test_cache_roundtrip(refs, tmp_path, monkeypatch):
    monkeypatch.setenv("MORERED_CACHE", str(tmp_path))
    a = make_inputs("diffused_50", refs, seed=5)
    files = list((tmp_path / "benchmark_inputs").glob("diffused-*.npz"))
    assert len(files) == 1 and "t50" in files[0].name and "seed5" in files[0].name
    b = make_inputs("diffused_50", refs, seed=5)
    assert_same_molecules(b, refs)
    for xa, xb in zip(a.positions, b.positions):
        np.testing.assert_array_equal(xa, xb)
    make_inputs("diffused_50", refs, seed=6)
    assert len(list((tmp_path / "benchmark_inputs").glob("diffused-*.npz"))) == 2
    with pytest.raises(ValueError):
        make_inputs("shaken", refs)


def test_read_user_inputs(refs, tmp_path):
    import ase.io

    ref_atoms = [refs.atoms(k) for k in range(3)]
    for a in ref_atoms:
        a.info = {"id": f"mol{a.info['id']}"}
    ase.io.write(tmp_path / "refs.extxyz", ref_atoms)
    inp = []
    rng = np.random.default_rng(0)
    for a in (ref_atoms[2], ref_atoms[0], ref_atoms[0]):  # several inputs may share a reference
        b = a.copy()
        b.positions += rng.normal(0, 0.1, b.positions.shape)
        inp.append(b)
    ase.io.write(tmp_path / "inputs.extxyz", inp)
    x, r = read_user_inputs(tmp_path / "inputs.extxyz", tmp_path / "refs.extxyz")
    assert list(x.ids) == [f"mol{refs.ids[2]}", f"mol{refs.ids[0]}", f"mol{refs.ids[0]}"]
    np.testing.assert_allclose(r.positions[0], refs.positions[2], atol=1e-6)
    np.testing.assert_allclose(r.positions[2], refs.positions[0], atol=1e-6)

    # SDF through RDKit, id from the molecule name
    from rdkit import Chem

    from morered.evaluation.baselines import perceive_bonds

    w = Chem.SDWriter(str(tmp_path / "refs.sdf"))
    for k in range(3):
        mol, _ = perceive_bonds(refs.numbers[k], refs.positions[k])
        mol.SetProp("_Name", f"mol{refs.ids[k]}")
        w.write(mol)
    w.close()
    s = read_structures(tmp_path / "refs.sdf")
    assert list(s.ids) == [f"mol{i}" for i in refs.ids[:3]]
    np.testing.assert_array_equal(s.numbers[1], refs.numbers[1])
    x2, r2 = read_user_inputs(tmp_path / "inputs.extxyz", tmp_path / "refs.sdf")
    np.testing.assert_allclose(r2.positions[0], refs.positions[2], atol=1e-4)
    # an SDF property as id (text as written), an empty title falls back to the index
    w = Chem.SDWriter(str(tmp_path / "props.sd"))
    for k in range(3):
        mol, _ = perceive_bonds(refs.numbers[k], refs.positions[k])
        if k != 1:
            mol.SetProp("mol_id", f"00{k}")
        w.write(mol)
    w.close()
    assert list(read_structures(tmp_path / "props.sd", "mol_id").ids) == ["000", "1", "002"]
    # a molecule without its hydrogens cannot be a benchmark structure
    from rdkit.Chem import AllChem

    heavy = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(heavy, randomSeed=0)
    heavy = Chem.RemoveHs(heavy)  # C, C, O with implicit hydrogens
    w = Chem.SDWriter(str(tmp_path / "heavy.sdf"))
    w.write(mol)
    w.write(heavy)
    w.close()
    with pytest.raises(ValueError, match="record 1 .*implicit hydrogens"):
        read_structures(tmp_path / "heavy.sdf")

    # an input whose atoms differ from its reference is refused
    bad = inp[0].copy()
    bad.numbers = bad.numbers[::-1]
    ase.io.write(tmp_path / "bad.extxyz", [bad])
    with pytest.raises(ValueError, match="atom order"):
        read_user_inputs(tmp_path / "bad.extxyz", tmp_path / "refs.extxyz")
    inp[0].info["id"] = "unknown"
    ase.io.write(tmp_path / "orphan.extxyz", inp[:1])
    with pytest.raises(KeyError):
        read_user_inputs(tmp_path / "orphan.extxyz", tmp_path / "refs.extxyz")


# ---------------------------------------------------------------------------- baselines


def test_baselines_relax_and_report(refs):
    from morered.evaluation.baselines import BASELINES, available

    z, ref = refs.numbers[0], refs.positions[0]
    x = ref + np.random.default_rng(0).normal(0, 0.05, ref.shape)
    r = BASELINES["identity"](z, x, ref, 10)
    np.testing.assert_array_equal(r.positions, x)
    for name in ("mmff", "xtb"):
        assert available(name) == (True, "")
        r = BASELINES[name](z, x, ref, 500)
        assert r.error is None and r.converged and 0 < r.steps <= 500 and r.seconds > 0
        assert kabsch_rmsd(r.positions, ref) < kabsch_rmsd(x, ref)
    assert r.energy_xtb is not None and r.threads >= 1
    r = BASELINES["xtb"](z, x, ref, 2)
    assert r.steps == 2 and not r.converged
    ok, why = available("nonsense")
    assert not ok and "unknown" in why


def test_baseline_errors_are_results_not_exceptions():
    from morered.evaluation.baselines import relax_mmff, relax_xtb

    z = np.array([6, 6])
    x = np.zeros((2, 3))  # two atoms on top of each other
    for fn in (relax_mmff, relax_xtb):
        r = fn(z, x, x, 10)
        assert r.positions is None and r.error and not r.converged


# ---------------------------------------------------------------------------- energies


def test_energies_water(qm9):
    from morered.evaluation.energies import dft_energy, xtb_energy

    x, z = qm9.molecule(int(np.where(qm9.ids == 3)[0][0]))  # H2O
    e = dft_energy(z, x)
    # QM9: U0 - ZPVE = -76.426077 Ha (Gaussian); spherical 6-31G(2df,p) in PySCF is 4.9 mHa above
    assert e == pytest.approx(-76.426077, abs=6e-3)
    assert dft_energy(z, x, cart=True) == pytest.approx(-76.426077, abs=1e-3)
    e_x = xtb_energy(z, x)
    assert -140 < e_x < -135  # eV; GFN2-xTB water is about -137.97 eV


# ---------------------------------------------------------------------------- report


def test_quantiles_with_failures():
    assert quantiles([1.0, 2.0, 3.0]) == [1.5, 2.0, 2.5]
    q = quantiles([1.0, 2.0, math.inf, math.inf])
    assert q[0] == 1.75 and q[1] == math.inf and q[2] == math.inf
    assert all(math.isnan(v) for v in quantiles([]))


def test_summarize_and_csv(tmp_path):
    rows = []
    for k, (ratio, conv, err) in enumerate([(0.5, True, None), (2.0, False, None), (math.inf, False, "boom"), (0.1, True, None)]):
        rmsd = 0.1 * ratio
        rows.append(dict(method="m", kind="k", mol_id=k, index=k, rmsd_in=0.1, rmsd=rmsd, rmsd_heavy=rmsd,
                         ratio=ratio, failure=is_failure(ratio), converged=conv, steps=10 * (k + 1), seconds=0.5,
                         threads=2, error=err, dE_xtb=[0.5, 3.0, math.inf, -0.2][k]))
    s = summarize(rows, {("m", "k"): {"seconds": 8.0, "threads": 2}})[0]
    assert s["n"] == 4 and s["n_error"] == 1
    assert s["failure_pct"] == 50.0 and s["converged_pct"] == 50.0
    assert s["ratio_median"] == pytest.approx(1.25)
    assert s["steps_mean"] == 25.0
    assert s["s_per_structure"] == 2.0 and s["structures_per_s"] == 0.5 and s["threads"] == 2
    assert s["dE_xtb_n"] == 4 and s["dE_xtb_within_1_pct"] == 50.0
    s2 = summarize(rows)[0]  # without batch timings: the rows' seconds add up
    assert s2["s_per_structure"] == 0.5
    back = read_csv(write_csv(rows, tmp_path / "r.csv"))
    assert len(back) == 4 and back[2]["ratio"] == math.inf and back[2]["failure"] is True
    assert back[0]["error"] is None and back[2]["error"] == "boom"


def _run_dir(path, groups, seconds):
    """A report directory with one row per (method, kind, index) of ``groups``: method -> [(kind, mol_id, rmsd)]."""
    from morered.evaluation.report import write_report

    rows = [dict(method=m, kind=kind, mol_id=mol, index=i, rmsd_in=0.2, rmsd=r, rmsd_heavy=r, ratio=r / 0.2,
                 failure=is_failure(r / 0.2), converged=True, steps=5, seconds=0.1, threads=1,
                 trajectory_t=[50, 10] if m == "jt" else None)
            for m, items in groups.items() for i, (kind, mol, r) in enumerate(items)]
    write_report(rows, path, meta={"date": path.name}, timings={(m, k): {"seconds": seconds, "threads": 1}
                                                                 for m, items in groups.items() for k, _, _ in items})
    return path


def test_merge_runs_replaces_the_rerun_groups_and_keeps_the_rest(tmp_path):
    from morered.evaluation.report import merge_runs

    items = lambda r: [("a", 7, r), ("a", 8, r), ("b", 7, r)]  # noqa: E731
    base = _run_dir(tmp_path / "base", {"xtb": items(0.05), "jt": items(0.10)}, 4.0)
    new = _run_dir(tmp_path / "new", {"jt": items(0.03)}, 1.0)
    rows, timings, meta = merge_runs(base, new)
    assert len(rows) == 6 and [(r["kind"], r["method"]) for r in rows][:2] == [("a", "xtb"), ("a", "xtb")]
    assert {r["rmsd"] for r in rows if r["method"] == "jt"} == {0.03}  # new rows in place of the old
    assert {r["rmsd"] for r in rows if r["method"] == "xtb"} == {0.05}  # the rest kept
    assert timings[("jt", "a")]["seconds"] == 1.0 and timings[("xtb", "a")]["seconds"] == 4.0
    assert "jt rows from" in meta["merged"] and meta["methods"] == "xtb, jt"
    # other inputs (another molecule at the same kind and index): refused, not silently joined
    other = _run_dir(tmp_path / "other", {"jt": [("a", 9, 0.03)]}, 1.0)
    with pytest.raises(ValueError, match="different inputs"):
        merge_runs(base, other)
