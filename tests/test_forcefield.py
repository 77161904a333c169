"""Force field: energy-conserving forces, equivariance, DeNS corruption and losses, calculator."""

import numpy as np
import pytest
import torch

from morered import properties as P
from morered.data.batch import collate
from morered.forcefield.dens import corrupt, forcefield_losses
from morered.forcefield.model import ForceField, fit_element_energies

REP = {"name": "painn", "n_features": 16, "n_interactions": 2, "n_rbf": 8, "cutoff": 5.0}


def rotation(seed=0):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.tensor(q, dtype=torch.float64)


def model(dens=True, seed=0):
    torch.manual_seed(seed)
    m = ForceField(REP, dens=dens).double()
    m.scale.fill_(0.7)
    m.element_energy[[1, 6, 8]] = torch.tensor([-10.0, -40.0, -70.0], dtype=torch.float64)
    return m


def batch(seed=0):
    g = np.random.default_rng(seed)
    pos = [g.normal(size=(5, 3)) * 1.2, g.normal(size=(4, 3)) * 1.2]
    num = [np.array([6, 1, 1, 8, 1]), np.array([8, 1, 6, 1])]
    b = collate(pos, num)
    b[P.R] = b[P.R].double()
    b[P.energy] = torch.tensor([-100.0, -110.0], dtype=torch.float64)
    b[P.forces] = torch.tensor(g.normal(size=(9, 3)), dtype=torch.float64)
    return b


def test_forces_are_the_negative_gradient():
    m, b = model(), batch()
    f = m(b)[P.forces]
    h = 1e-5
    for atom, c in [(0, 0), (3, 2), (7, 1)]:
        e = []
        for s in (h, -h):
            x = b[P.R].clone()
            x[atom, c] += s
            e.append(m({**b, P.R: x}, forces=False)[P.energy].sum().item())
        assert f[atom, c].item() == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=1e-5, abs=1e-7)


def test_energy_invariant_forces_equivariant_under_rotation():
    m, b = model(), batch()
    Q = rotation(1)
    out = m(b)
    rot = m({**b, P.R: b[P.R] @ Q.T})
    torch.testing.assert_close(rot[P.energy], out[P.energy])
    torch.testing.assert_close(rot[P.forces], out[P.forces] @ Q.T)


def test_predicted_noise_rotates_with_inputs_and_force_input():
    m, b = model(), batch()
    Q = rotation(2)
    fin = b[P.forces] * torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.float64)[:, None]
    out = m(b, force_input=fin)
    rot = m({**b, P.R: b[P.R] @ Q.T}, force_input=fin @ Q.T)
    torch.testing.assert_close(rot[P.noise_pred], out[P.noise_pred] @ Q.T)
    torch.testing.assert_close(rot[P.forces], out[P.forces] @ Q.T)
    # the force input matters (else the test above would pass trivially for the input path)
    assert not torch.allclose(out[P.energy], m(b, force_input=fin * 2)[P.energy])


def test_zero_force_input_is_no_force_input():
    m, b = model(), batch()
    a = m(b)
    z = m(b, force_input=torch.zeros_like(b[P.forces]))
    torch.testing.assert_close(a[P.energy], z[P.energy], rtol=0, atol=0)
    torch.testing.assert_close(a[P.forces], z[P.forces], rtol=0, atol=0)


def test_force_input_is_bounded_in_magnitude_not_in_direction():
    from morered.forcefield.model import ForceInput

    torch.manual_seed(0)
    fi = ForceInput(8, bound=4.0).double()
    s, v = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 3, 8, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(3, 3, dtype=torch.float64), dim=-1)
    out = {a: fi(s, v, d * a) for a in (0.1, 1.0, 1e3, 1e5)}
    # small forces still move the features in proportion; huge ones saturate (finite, bounded)
    assert not torch.allclose(out[0.1][1], out[1.0][1])
    for a in (1e3, 1e5):
        assert torch.isfinite(out[a][0]).all() and torch.isfinite(out[a][1]).all()
    torch.testing.assert_close(out[1e5][1], out[1e3][1], rtol=0.02, atol=0.02)
    # the vector part added is along the force: flipping the force flips the added vectors
    flip = fi(s, v, -d * 2.0)[1] - v
    torch.testing.assert_close(flip, -(fi(s, v, d * 2.0)[1] - v))


def test_denoising_target_is_what_was_added():
    b = batch()
    noisy, atom, eps = corrupt(b, p=1.0, sigma=0.05, fraction=0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noisy[P.R] - b[P.R], eps)
    assert atom.any() and (~atom).any()
    assert (eps[~atom] == 0).all() and (eps[atom].abs() > 0).all()
    torch.testing.assert_close(noisy[P.force_input][atom], b[P.forces][atom])
    assert (noisy[P.force_input][~atom] == 0).all()
    # p = 0: nothing corrupted
    _, atom0, eps0 = corrupt(b, p=0.0, sigma=0.05, fraction=0.5)
    assert not atom0.any() and (eps0 == 0).all()


def test_uncorrupted_batch_gives_the_plain_loss():
    m, b = model(), batch()
    plain = forcefield_losses(m, b, dens=None)
    none = forcefield_losses(m, b, dens={"p": 0.0, "sigma": 0.05, "fraction": 0.25})
    assert "denoising" not in none
    torch.testing.assert_close(none["loss"], plain["loss"])
    w = {"energy": 1.0, "forces": 80.0}
    expect = (plain["energy"] * w["energy"] + plain["forces"] * w["forces"])
    torch.testing.assert_close(plain["loss"], expect)
    dens = forcefield_losses(m, b, dens={"p": 1.0, "sigma": 0.05, "fraction": 0.5},
                             generator=torch.Generator().manual_seed(0))
    assert "denoising" in dens and dens["loss"] > 0


def test_element_energies_least_squares():
    num = np.array([1, 1, 6, 1, 8, 6, 6, 8])
    off = np.array([0, 3, 5, 8])
    e_true = {1: -0.5, 6: -38.0, 8: -75.0}
    energies = [sum(e_true[z] for z in num[a:b]) for a, b in zip(off[:-1], off[1:])]
    t = fit_element_energies(num, off, energies)
    assert t[1] == pytest.approx(-0.5) and t[6] == pytest.approx(-38.0) and t[8] == pytest.approx(-75.0)


def test_calculator_with_ase_optimizer_and_batches():
    from ase import Atoms
    from ase.optimize import LBFGS

    from morered.calculators import ForceField as Calc

    m = model(dens=False)
    calc = Calc(m)
    b = batch()
    x = b[P.R].numpy()
    a = Atoms(numbers=b[P.Z].numpy()[:5], positions=x[:5])
    a.calc = calc
    e, f = a.get_potential_energy(), a.get_forces()
    ref = m(b)
    assert e == pytest.approx(ref[P.energy][0].item(), rel=1e-10)
    np.testing.assert_allclose(f, ref[P.forces][:5].detach().numpy(), atol=1e-10)
    es, fs = calc.evaluate([a, (b[P.Z].numpy()[5:], x[5:])], batch_size=1)
    np.testing.assert_allclose(es, ref[P.energy].detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(fs[1], ref[P.forces][5:].detach().numpy(), atol=1e-10)
    e0 = a.get_potential_energy()
    a.positions = a.positions + 1e-3 * a.get_forces()  # a small step along the forces goes downhill
    assert a.get_potential_energy() < e0
    opt = LBFGS(a, logfile=None)
    opt.run(fmax=0.05, steps=5)  # any ASE optimizer drives it
    assert opt.nsteps > 0 and np.isfinite(a.get_positions()).all()


def synthetic_labels(path, n=24, seed=0):
    """Labels with a known smooth energy (harmonic bonds to the first atom) instead of GFN2-xTB."""
    from morered.forcefield.labels import Labels

    g = np.random.default_rng(seed)
    pos, num, en, fo = [], [], [], []
    for k in range(n):
        z = np.array([6, 1, 1, 8, 1][: 3 + k % 3])
        x = g.normal(size=(len(z), 3))
        d = x - x[0]
        en.append(-10.0 * len(z) + 0.5 * (d**2).sum())
        f = -d
        f[0] = d[1:].sum(0)
        pos.append(x)
        num.append(z)
        fo.append(f)
    n_at = np.array([len(z) for z in num])
    split = np.array(["train"] * (n - 8) + ["val"] * 4 + ["test"] * 4)
    lab = Labels(np.concatenate(pos), np.concatenate(num), np.concatenate([[0], np.cumsum(n_at)]), np.arange(n),
                 np.array(en), np.concatenate(fo), np.array(["reference"] * n), split, {"method": "synthetic"}, [])
    lab.save(path)
    return lab


@pytest.mark.parametrize("dens", [False, True])
def test_train_forcefield_exports_and_resumes(tmp_path, dens):
    from conftest import tiny_config

    from morered.forcefield.model import load_forcefield
    from morered.training.train import train

    synthetic_labels(tmp_path / "labels.npz")
    over = {"forcefield.labels": str(tmp_path / "labels.npz"), "forcefield.dens": dens, "forcefield.p": 1.0,
            "data.batch_size": 4, "trainer.max_steps": 3, "trainer.val_every_steps": 2}
    path = train(tiny_config("forcefield", **over), tmp_path / "run")
    m = load_forcefield(path)
    assert (m.noise_head is not None) == dens
    assert m.element_energy[6].item() != 0.0 and m.scale.item() > 0  # fitted on the training labels
    d = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert d["model_type"] == "forcefield" and d["global_step"] == 3
    # resume: three more steps from last.ckpt
    train(tiny_config("forcefield", **{**over, "trainer.max_steps": 6}), tmp_path / "run")
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["global_step"] == 6


def test_labels_above_a_force_cap_are_left_out_and_counted(tmp_path, caplog):
    import logging

    from conftest import tiny_config

    from morered.errors import OptionError
    from morered.training.forcefield import load_label_data

    lab = synthetic_labels(tmp_path / "labels.npz")
    big = [1, 5, 17]  # two training structures, one validation structure
    for k in big:
        lab.forces[lab.slices(k)] *= 100.0
    lab.save(tmp_path / "labels.npz")
    biggest = lab.max_force()
    assert biggest.shape == (len(lab),) and (biggest[big] > 50).all()
    srt = np.sort(biggest)
    cap = float(srt[-3] + srt[-4]) / 2  # between the three scaled-up structures and the rest
    assert set(np.setdiff1d(np.arange(len(lab)), lab.where(max_force=cap))) == set(big)
    cfg = tiny_config("forcefield", **{"forcefield.labels": str(tmp_path / "labels.npz"), "forcefield.max_force": cap})
    with caplog.at_level(logging.WARNING, logger="morered.train"):
        train, val, info = load_label_data(cfg)
    assert (len(train), len(val)) == (16 - 2, 4 - 1)
    assert info["left_out_max_force"]["train"] == {"n": 2, "of": 16, "by_kind": {"reference": 2}}
    assert info["left_out_max_force"]["val"]["n"] == 1
    assert "2 of 16 train structures left out" in caplog.text
    assert train.max_force().max() <= cap
    everything, _, info0 = load_label_data(tiny_config("forcefield", **{"forcefield.labels": str(tmp_path / "labels.npz")}))
    assert len(everything) == 16 and info0["left_out_max_force"] == {}
    with pytest.raises(OptionError, match="max_force"):
        load_label_data(tiny_config("forcefield", **{"forcefield.labels": str(tmp_path / "labels.npz"),
                                                      "forcefield.max_force": 0}))


@pytest.mark.parametrize("layout", ["equal sizes", "padded group", "too large for dense"])
def test_dense_kernel_is_the_same_function_as_the_edge_list(layout, monkeypatch):
    """Energies, forces, the DeNS noise prediction and the training gradient (forces through a
    second backward pass) agree between the dense kernel (representation, force input and last
    block on all pairs) and the edge list; also with a padded size group (the force input of
    padding must not leak) and with a molecule too large for the dense kernel (edge list for the
    last block)."""
    m, b = model(), batch()
    if layout == "padded group":
        m.representation.bucket_ratio = 2.0  # the 4-atom molecule padded to 5
    if layout == "too large for dense":
        m.representation.max_dense_atoms = 4
    fi = torch.tensor(np.random.default_rng(3).normal(size=(9, 3)))
    out = {}
    for k in ("edges", "dense"):
        m.kernel = k
        m.zero_grad()
        if k == "dense" and layout != "too large for dense":  # all of it dense: no edge list built
            monkeypatch.setattr("morered.forcefield.model.batch_edges", lambda *a: pytest.fail("edge list built"))
        o = m(b, create_graph=True, force_input=fi)
        (o[P.energy].sum() + (o[P.forces] ** 2).sum() + o[P.noise_pred].sum()).backward()
        out[k] = [o[P.energy], o[P.forces], o[P.noise_pred]] + [p.grad.clone() for p in m.parameters()
                                                               if p.grad is not None]
    assert len(out["edges"]) == len(out["dense"]) > 3
    for a, c in zip(out["edges"], out["dense"]):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-10)
    m.kernel = "auto"
    assert m.kernel == "auto"
    with pytest.raises(ValueError, match="kernel must be"):
        m.kernel = "fast"
    if layout == "too large for dense":
        with pytest.raises(ValueError, match="dense tail needs molecules of at most 4 atoms"):
            m.representation.forward_dense(b[P.Z], b[P.R], b[P.n_atoms], tail=lambda s, v, pairs, idx: (s, v))


def springs(evaluate_calls=None):
    """A cheap smooth potential (harmonic springs to the first atom plus a repulsion) as a batched
    ``evaluate`` function, to compare the batched L-BFGS with ASE's."""

    def energy_forces(x):
        x = torch.tensor(x, requires_grad=True)
        d = torch.linalg.vector_norm(x[1:] - x[0], dim=-1)
        pair = torch.pdist(x)
        e = 0.5 * ((d - 1.1) ** 2).sum() + 0.05 * (1.0 / pair**6).sum()
        (g,) = torch.autograd.grad(e, x)
        return e.item(), -g.numpy()

    def evaluate(structures):
        if evaluate_calls is not None:
            evaluate_calls.append(len(structures))
        res = [energy_forces(np.asarray(x, np.float64)) for _, x in structures]
        return np.array([e for e, _ in res]), [f for _, f in res]

    return evaluate


def test_batched_lbfgs_takes_ases_lbfgs_steps():
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import LBFGS

    from morered.forcefield.optimize import batched_lbfgs

    calls = []
    evaluate = springs(calls)

    class Springs(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            e, f = evaluate([(None, self.atoms.positions)])
            self.results = {"energy": e[0], "forces": f[0]}

    g = np.random.default_rng(0)
    structures = [(np.full(n, 6), g.normal(size=(n, 3)) * 1.5) for n in (3, 5, 7, 4)]
    calls.clear()
    out = batched_lbfgs(evaluate, structures, fmax=1e-3, max_steps=60)
    batched_calls = list(calls)
    assert batched_calls[0] == 4 and max(batched_calls[1:]) <= 4 and len(batched_calls) <= 61
    steps = []
    for (z, x), o in zip(structures, out):
        a = Atoms(numbers=z, positions=x)
        a.calc = Springs()
        opt = LBFGS(a, logfile=None)
        converged = opt.run(fmax=1e-3, steps=60)
        assert (o.steps, o.converged) == (opt.nsteps, converged)
        np.testing.assert_allclose(o.positions, a.positions, atol=1e-10)
        assert o.error is None and o.energy == pytest.approx(a.get_potential_energy(), abs=1e-12)
        steps.append(o.steps)
    assert min(steps) > 3 and any(o.converged for o in out)
    # a step cap stops without convergence, as ASE's steps=
    capped = batched_lbfgs(evaluate, structures, fmax=1e-6, max_steps=2)
    assert all(o.steps == 2 and not o.converged for o in capped)


def test_batched_lbfgs_stops_a_broken_structure_and_goes_on():
    from morered.forcefield.optimize import batched_lbfgs

    good = springs()

    def evaluate(structures):
        e, f = good(structures)
        for k, (z, _) in enumerate(structures):
            if z[0] == 9:  # "unsupported": NaN forces
                f[k] = np.full_like(f[k], np.nan)
        return e, f

    g = np.random.default_rng(1)
    structures = [(np.full(4, 6), g.normal(size=(4, 3))), (np.full(4, 9), g.normal(size=(4, 3))),
                  (np.full(5, 6), g.normal(size=(5, 3)))]
    out = batched_lbfgs(evaluate, structures, fmax=1e-3, max_steps=100)
    assert out[1].positions is None and "non-finite" in out[1].error and out[1].steps == 0
    assert all(out[k].error is None and out[k].converged for k in (0, 2))
    with pytest.raises(ValueError, match="fmax"):
        batched_lbfgs(evaluate, structures, fmax=0)


def test_calculator_relaxes_many_structures_at_once():
    """ForceField.relax: batched, and the same path as ASE's L-BFGS with the same calculator."""
    from ase import Atoms
    from ase.optimize import LBFGS

    from morered.calculators import ForceField as Calc

    m = model(dens=False)
    b = batch()
    x = b[P.R].numpy()
    structures = [(b[P.Z].numpy()[:5], x[:5]), (b[P.Z].numpy()[5:], x[5:])]
    calc = Calc(m)
    out = calc.relax(structures, fmax=0.05, max_steps=40)
    _, f1 = calc.evaluate([(z, o.positions) for (z, _), o in zip(structures, out)])
    for (z, x0), o, f in zip(structures, out, f1):
        assert o.converged == (np.linalg.norm(f, axis=1).max() < 0.05) and o.steps > 0
        a = Atoms(numbers=z, positions=x0)
        a.calc = calc
        opt = LBFGS(a, logfile=None)
        assert opt.run(fmax=0.05, steps=40) == o.converged and opt.nsteps == o.steps
        np.testing.assert_allclose(o.positions, a.positions, atol=1e-8)


@pytest.mark.parametrize("name", ["mlff", "mlff-dens"])
def test_shipped_force_fields_load_and_relax(name):
    """The shipped PaiNN force fields (GFN2-xTB labels) load by name, are rotation-consistent and
    bring a displaced QM9 molecule's forces down."""
    from morered.calculators import ForceField as Calc
    from morered.evaluation.inputs import qm9_references
    from morered.evaluation.peers import peer_available

    assert peer_available(name) == (True, "")
    calc = Calc(name)
    assert (calc.model.noise_head is not None) == (name == "mlff-dens")
    ref = qm9_references(1, 0)
    z, x = ref.numbers[0], ref.positions[0]
    x0 = x + np.random.default_rng(0).normal(0, 0.05, x.shape)
    Q = rotation(2).numpy()
    (e0, e1), (f0, f1) = calc.evaluate([(z, x0), (z, x0 @ Q.T)])
    assert e0 == pytest.approx(e1, abs=1e-8)
    np.testing.assert_allclose(f1, f0 @ Q.T, atol=1e-8)
    (out,) = calc.relax([(z, x0)], fmax=0.01, max_steps=300)
    _, (f,) = calc.evaluate([(z, out.positions)])
    assert out.error is None and np.linalg.norm(f, axis=1).max() < min(0.05, np.linalg.norm(f0, axis=1).max())


def _benchmark_script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_relaxation_comparison_splits_by_input_force():
    """forcefield_relax.paired: per-molecule differences against the first model, on all inputs and
    separately on the inputs above / at or below the force cap (a NaN force is in neither subset)."""
    paired = _benchmark_script("forcefield_relax").paired
    base = {"kind": "k", "model": "a", "ids": [0, 1, 2, 3, 4], "rmsd": [0.1, 0.2, 0.3, 0.4, 0.5],
            "input_max_force": [10.0, 60.0, 70.0, 20.0, float("nan")]}
    other = {"kind": "k", "model": "b", "ids": [0, 1, 2, 3, 4], "rmsd": [0.3, 0.1, 0.2, 0.6, 0.5]}
    lines = paired([base, other], cap=50.0)
    assert len(lines) == 3
    assert "k: b - a" in lines[0] and "of 5 molecules" in lines[0]
    above = next(x for x in lines if "above 50" in x)
    below = next(x for x in lines if "at or below 50" in x)
    assert "median difference -0.1000" in above and "lower on 100 % of 2" in above
    assert "median difference +0.2000" in below and "lower on 0 % of 2" in below
    assert len(paired([base, other])) == 1  # no cap: no split
