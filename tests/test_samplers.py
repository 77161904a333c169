"""Samplers and the relaxation API: centring, independent convergence, ITP's fixed schedule,
seeds, rotation, input order, step limits, and inputs that cannot be relaxed."""

from collections import defaultdict

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from torch import nn

import morered
from conftest import random_rotation
from morered import properties as P
from morered.diffusion.schedule import NoiseSchedule
from morered.sampling.models import load_model, pair
from morered.sampling.samplers import SAMPLERS, SamplerOptions

SCHEDULE = NoiseSchedule("polynomial", 1000)


class StubModel(nn.Module):
    """A model with the samplers' call signature whose predicted step the test controls.

    ``steps[n]``: the steps predicted for the molecule with ``n`` atoms on its 1st, 2nd, ...
    time prediction (the last value repeats).  The noise is ``0.3 x + offset``: not centred, so
    the samplers must re-centre themselves.
    """

    def __init__(self, steps: dict[int, list[int]], T: int = 1000, max_calls: int = 10_000):
        super().__init__()
        self.steps, self.T, self.max_calls = steps, T, max_calls
        self.n_calls = 0
        self.calls = defaultdict(int)
        self.seen: list[list[int]] = []  # molecule sizes of every time prediction
        self.weight = nn.Parameter(torch.zeros(()))  # float32, like a real model

    def forward(self, batch, t_norm=None):
        n_atoms = batch[P.n_atoms].tolist()
        self.n_calls += 1
        if self.n_calls > self.max_calls:  # a sampler that never stops fails instead of hanging
            raise RuntimeError(f"model called more than {self.max_calls} times")
        out = {}
        # a time prediction for every molecule whose step is not given (t_norm None or NaN)
        own = [True] * len(n_atoms) if t_norm is None else torch.isnan(t_norm).tolist()
        if any(own):
            self.seen.append([n for n, o in zip(n_atoms, own) if o])
            t = []
            for n, o in zip(n_atoms, own):
                s = self.steps[n]
                t.append(s[min(self.calls[n], len(s) - 1)])
                self.calls[n] += int(o)
            out[P.t_pred] = torch.tensor(t, dtype=torch.float32) / self.T
            out[P.t_pred_atom] = out[P.t_pred][batch[P.idx_m]]
        out[P.eps_pred] = 0.3 * batch[P.R] + torch.tensor([0.5, -0.2, 0.1])
        return out


def _inputs(test_molecules, index=range(8), noise=0.05, seed=0):
    """Perturbed test molecules as (numbers, positions float64), each moved far from the origin."""
    rng = np.random.default_rng(seed)
    mols = []
    for j, k in enumerate(index):
        x, z = test_molecules.molecule(k)
        x = x.astype(np.float64) + noise * rng.standard_normal(x.shape) + np.array([5.0 * j, -3.0, 1.0 + j])
        mols.append((z.astype(np.int64), x))
    return mols


def _distinct_sizes(test_molecules):
    """Test molecules with distinct atom counts (so a StubModel can tell them apart)."""
    seen, index = set(), []
    for k in range(len(test_molecules)):
        n = len(test_molecules.molecule(k)[1])
        if n not in seen:
            seen.add(n)
            index.append(k)
    return _inputs(test_molecules, index)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_model(tiny_model_path)


def _setup(variant, tiny):
    """(model, options kwargs) for a variant with the tiny model."""
    if variant == "as":
        return pair(tiny, tiny).model, {}
    if variant == "ddpm":
        return tiny.model, {"t_start": 20}
    return tiny.model, {}


def _run(variant, model, mols, callback=None, **kw):
    """The samplers' mechanics on one-step-at-a-time DDPM updates: the relaxation tails, DDIM jumps
    and the plateau rule of the defaults are off unless a test asks for them."""
    kw.setdefault("tail_t", 0)
    kw.setdefault("eq_tail_t", 0)
    kw.setdefault("tail_scale", 0.0)
    kw.setdefault("jump", 0.0)
    kw.setdefault("patience", 0)
    return SAMPLERS[variant](model, mols, SCHEDULE, SamplerOptions(**kw), callback)


# ------------------------------------------------------------------------------------ centring
@pytest.mark.parametrize("variant", ["jt", "as", "itp", "ddpm"])
@pytest.mark.parametrize("which", ["tiny", "stub"])
def test_centre_stays_after_every_step(test_molecules, tiny, variant, which):
    if which == "tiny":
        mols = _inputs(test_molecules)
        model, kw = _setup(variant, tiny)
    else:
        mols = _distinct_sizes(test_molecules)
        model = StubModel({len(z): [40 + 10 * j, 30 + 10 * j, 20] for j, (z, _) in enumerate(mols)})
        kw = {"t_start": 20} if variant == "ddpm" else {}
    centres = [x.mean(0) for _, x in mols]
    events = []
    res = _run(variant, model, mols, events.append, max_steps=6, stochastic=True, seed=1, batch_size=3, **kw)
    assert events
    for ev in events:
        for k, x in zip(ev["mol"], ev["positions"]):
            np.testing.assert_allclose(x.mean(0), centres[k], atol=1e-9)
    for r, c, (_, x) in zip(res, centres, mols):
        assert r.positions.shape == x.shape
        np.testing.assert_allclose(r.positions.mean(0), c, atol=1e-9)
    if which == "stub":  # the molecules moved, so the check above was not vacuous
        assert all(np.abs(r.positions - x).max() > 1e-3 for r, (_, x) in zip(res, mols))


def test_relax_trajectory_keeps_the_centre(test_molecules, tiny):
    atoms = [Atoms(numbers=z, positions=x) for z, x in _inputs(test_molecules)]
    res = morered.relax(atoms, tiny, "ddpm", t_start=15, max_steps=5, trajectory=True)
    for a, r in zip(atoms, res):
        assert r.error is None
        assert len(r.trajectory) == r.steps + 1 == 6
        np.testing.assert_array_equal(r.trajectory[0], a.positions)  # the input comes first
        np.testing.assert_array_equal(r.trajectory[-1], r.positions)
        for x in r.trajectory:
            np.testing.assert_allclose(x.mean(0), a.positions.mean(0), atol=1e-9)


# ------------------------------------------------------------------------------------ convergence
def test_converged_molecules_freeze_while_others_go_on(test_molecules):
    mols = _distinct_sizes(test_molecules)[:3]
    a, b, c = (len(z) for z, _ in mols)
    model = StubModel({a: [30, 20, 10], b: [60, 50, 40, 30, 20, 10], c: [500]})
    events = []
    res = _run("jt", model, mols, events.append, max_steps=8, t_conv=10)
    present = [[k in ev["mol"] for ev in events] for k in range(3)]
    assert present[0] == [True] * 3 + [False] * 5
    assert present[1] == [True] * 6 + [False] * 2
    assert present[2] == [True] * 8
    # a converged molecule leaves the batch: the model never sees it again
    assert all(a not in sizes for sizes in model.seen[3:]) and all(b not in sizes for sizes in model.seen[6:])

    ra, rb, rc = res
    assert (ra.t0, ra.steps, ra.converged, ra.t_final, ra.trajectory_t) == (30, 3, True, 10, [30, 20, 10])
    assert (rb.t0, rb.steps, rb.converged, rb.t_final) == (60, 6, True, 10)
    assert (rc.t0, rc.steps, rc.converged, rc.t_final) == (500, 8, False, 500)
    assert rc.trajectory_t == [500] * 8
    # a's positions are those after its last step (which moved it once more), untouched afterwards
    last_a = [dict(zip(ev["mol"], ev["positions"]))[0] for ev in events[:3]]
    np.testing.assert_array_equal(ra.positions, last_a[-1])
    assert np.abs(last_a[-1] - last_a[-2]).max() > 1e-4


def test_step_zero_does_not_move(test_molecules):
    mols = _distinct_sizes(test_molecules)[:2]
    model = StubModel({len(mols[0][0]): [0], len(mols[1][0]): [5]})
    r0, r1 = _run("jt", model, mols, max_steps=10, t_conv=10)
    assert (r0.steps, r0.converged, r0.t0) == (0, True, 0)
    np.testing.assert_array_equal(r0.positions, mols[0][1])
    assert (r1.steps, r1.converged, r1.t0) == (1, True, 5)  # one last mean step
    assert np.abs(r1.positions - mols[1][1]).max() > 1e-4


def test_last_step_before_convergence_is_noise_free(test_molecules):
    mols = _distinct_sizes(test_molecules)[:2]
    steps = {len(mols[0][0]): [8], len(mols[1][0]): [80, 60, 40, 20, 5]}
    r1 = _run("jt", StubModel(steps), mols, max_steps=10, t_conv=10, stochastic=True, seed=1)
    r2 = _run("jt", StubModel(steps), mols, max_steps=10, t_conv=10, stochastic=True, seed=2)
    np.testing.assert_array_equal(r1[0].positions, r2[0].positions)  # converged at once: mean step only
    assert np.abs(r1[1].positions - r2[1].positions).max() > 1e-3  # noisy steps before converging


# ------------------------------------------------------------------------------------ ITP / DDPM schedules
def test_itp_steps_down_by_one_from_the_first_prediction(test_molecules):
    mols = _distinct_sizes(test_molecules)[:3]
    # later predictions must be ignored by ITP: only the first counts
    model = StubModel({len(mols[0][0]): [20, 999], len(mols[1][0]): [0, 500], len(mols[2][0]): [7, 1]})
    r = _run("itp", model, mols, max_steps=100)
    assert r[0].trajectory_t == list(range(20, 0, -1))
    assert (r[0].t0, r[0].steps, r[0].converged, r[0].t_final) == (20, 20, True, 0)
    assert (r[1].t0, r[1].steps, r[1].converged, r[1].trajectory_t) == (0, 0, True, [0])
    np.testing.assert_array_equal(r[1].positions, mols[1][1])
    assert r[2].trajectory_t == [7, 6, 5, 4, 3, 2, 1]
    # cut short by max_steps
    model = StubModel({len(mols[0][0]): [20]})
    (short,) = _run("itp", model, mols[:1], max_steps=5)
    assert (short.steps, short.converged, short.t_final, short.trajectory_t) == (5, False, 15, [20, 19, 18, 17, 16])


def test_itp_with_the_tiny_model(test_molecules, tiny):
    res = _run("itp", tiny.model, _inputs(test_molecules), max_steps=1000)
    for r in res:
        assert r.trajectory_t[0] == r.t0
        assert np.all(np.diff(r.trajectory_t) == -1)
        assert r.converged and r.steps == r.t0 and r.t_final == 0
    assert max(r.t0 for r in res) > 0  # at least one molecule actually moved


def test_ddpm_schedule_and_t_start(test_molecules, tiny):
    mols = _inputs(test_molecules, range(3))
    res = _run("ddpm", tiny.model, mols, t_start=12, max_steps=1000)
    for r in res:
        assert r.trajectory_t == list(range(12, 0, -1))
        assert (r.t0, r.steps, r.converged, r.t_final) == (12, 12, True, 0)
    with pytest.raises(ValueError, match="t_start"):
        _run("ddpm", tiny.model, mols)


# ------------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("variant", ["ddpm", "jt"])
def test_seed_decides_the_noise(test_molecules, tiny, variant):
    if variant == "ddpm":
        model, kw, mols = tiny.model, {"t_start": 30}, _inputs(test_molecules, range(4))
    else:
        mols = _distinct_sizes(test_molecules)
        model, kw = None, {}

    def run(seed, stochastic=True):
        m = model if model is not None else StubModel({len(z): [90, 70, 50, 30] for z, _ in mols})
        return [r.positions for r in _run(variant, m, mols, max_steps=4, stochastic=stochastic, seed=seed, **kw)]

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert max(np.abs(x - z).max() for x, z in zip(a, c)) > 1e-3
    # deterministic updates do not depend on the seed
    for x, y in zip(run(3, False), run(4, False)):
        np.testing.assert_array_equal(x, y)



def test_noise_scale_scales_the_posterior_noise(test_molecules, tiny):
    """One stochastic DDPM step is mean + noise_scale * sigma_t z: the displacement from the
    deterministic step is linear in noise_scale, and 0 reproduces the deterministic sampler."""
    mols = _inputs(test_molecules, range(3))

    def run(scale, stochastic=True):
        return [r.positions for r in _run("ddpm", tiny.model, mols, t_start=30, max_steps=1, stochastic=stochastic,
                                          seed=5, noise_scale=scale)]

    det, full, half, zero = run(1.0, False), run(1.0), run(0.5), run(0.0)
    for d, f, h, z in zip(det, full, half, zero):
        assert np.abs(f - d).max() > 1e-3
        np.testing.assert_allclose(h - d, 0.5 * (f - d), atol=1e-6)
        np.testing.assert_allclose(z, d, atol=1e-10)



def test_t_floor_holds_the_adaptive_schedule_to_the_fixed_one(test_molecules):
    """t_floor: the step used after k steps is max(predicted, t_floor - k); the prediction takes
    over once it is the larger, and the stopping rule sees the step used."""
    mols = _distinct_sizes(test_molecules)[:2]
    steps = {len(mols[0][0]): [5], len(mols[1][0]): [30, 30, 30, 2]}
    r0, r1 = _run("jt", StubModel(steps), mols, max_steps=50, t_conv=5, t_eq=-1, t_floor=20)
    assert r0.trajectory_t == list(range(20, 4, -1)) and r0.steps == 16 and r0.converged
    assert r1.trajectory_t[:4] == [30, 30, 30, 17] and r1.trajectory_t[-1] == 5
    (free,) = _run("jt", StubModel({len(mols[0][0]): [5]}), mols[:1], max_steps=50, t_conv=5, t_eq=-1)
    assert free.trajectory_t == [5] and free.steps == 1


# ------------------------------------------------------------------------------------ rotation
@pytest.mark.parametrize("variant", ["jt", "as", "itp", "ddpm"])
def test_rotating_the_input_rotates_the_output(test_molecules, tiny, variant):
    model, kw = _setup(variant, tiny)
    if variant == "ddpm":
        kw = {"t_start": 900}  # large steps: the untrained model's noise is tiny, 1/sqrt(alpha) is not
    mols = _inputs(test_molecules, noise=0.1)
    Q = random_rotation(torch.Generator().manual_seed(7)).numpy()
    rotated = [(z, x @ Q.T) for z, x in mols]
    ref = _run(variant, model, mols, max_steps=10, **kw)
    rot = _run(variant, model, rotated, max_steps=10, **kw)
    moved = 0.0
    for r, q, (_, x) in zip(ref, rot, mols):
        assert (r.t0, r.steps, r.trajectory_t) == (q.t0, q.steps, q.trajectory_t)
        np.testing.assert_allclose(q.positions, r.positions @ Q.T, atol=1e-4, rtol=0)
        moved = max(moved, np.abs(r.positions - x).max())
    assert moved > 1e-3  # something moved, so the comparison means something


# ------------------------------------------------------------------------------------ order and limits
def test_results_in_input_order_with_a_small_pool(test_molecules, tiny):
    mols = _inputs(test_molecules)
    big = _run("ddpm", tiny.model, mols, t_start=15, max_steps=6, batch_size=128)
    small = _run("ddpm", tiny.model, mols, t_start=15, max_steps=6, batch_size=3)
    assert len(small) == len(mols)
    for r, s, (_, x) in zip(big, small, mols):
        assert s.positions.shape == x.shape
        np.testing.assert_allclose(s.positions.mean(0), x.mean(0), atol=1e-9)
        np.testing.assert_allclose(s.positions, r.positions, atol=1e-5, rtol=0)


def test_order_when_molecules_finish_at_different_times(test_molecules):
    mols = _distinct_sizes(test_molecules)
    # molecule j converges after len(mols) - j calls: the last ones finish first
    steps = {len(z): [100] * (len(mols) - 1 - j) + [5] for j, (z, _) in enumerate(mols)}
    res = _run("jt", StubModel(steps), mols, max_steps=50, t_conv=10, batch_size=2)
    for j, (r, (_, x)) in enumerate(zip(res, mols)):
        assert r.converged and r.steps == len(mols) - j
        assert r.t0 == (100 if j < len(mols) - 1 else 5)
        assert r.positions.shape == x.shape
        np.testing.assert_allclose(r.positions.mean(0), x.mean(0), atol=1e-9)


@pytest.mark.parametrize("variant", ["jt", "itp"])
def test_max_steps_is_respected(test_molecules, variant):
    mols = _distinct_sizes(test_molecules)[:2]
    res = _run(variant, StubModel({len(z): [400] for z, _ in mols}), mols, max_steps=7, t_conv=10)
    for r in res:
        assert r.steps == 7 and len(r.trajectory_t) == 7 and not r.converged


@pytest.mark.parametrize("variant", ["jt", "itp", "ddpm"])
def test_max_steps_zero_only_predicts(test_molecules, variant):
    mols = _distinct_sizes(test_molecules)[:2]
    kw = {"t_start": 40} if variant == "ddpm" else {}
    res = _run(variant, StubModel({len(z): [40] for z, _ in mols}, max_calls=10), mols, max_steps=0, **kw)
    for r, (_, x) in zip(res, mols):
        assert (r.t0, r.steps, r.converged, r.t_final, r.trajectory_t) == (40, 0, False, 40, [40])
        np.testing.assert_array_equal(r.positions, x)


def test_negative_t_conv_stops_at_step_zero(test_molecules):
    mols = _distinct_sizes(test_molecules)[:2]
    model = StubModel({len(mols[0][0]): [0], len(mols[1][0]): [30, 20, 10, 0]}, max_calls=50)
    r0, r1 = _run("jt", model, mols, max_steps=100, t_conv=-1)
    assert (r0.steps, r0.converged, r0.t_final) == (0, True, 0)
    assert (r1.steps, r1.converged, r1.t_final, r1.trajectory_t) == (3, True, 0, [30, 20, 10, 0])


def _bad_and_good(test_molecules):
    good = [Atoms(numbers=z, positions=x) for z, x in _inputs(test_molecules, range(3))]
    silicon = good[0].copy()
    silicon.numbers[0] = 14
    nan = good[1].copy()
    nan.positions[2, 1] = np.nan
    overlap = good[2].copy()
    overlap.positions[1] = overlap.positions[0] + [0.1, 0.0, 0.0]
    grid = np.stack(np.meshgrid(*[np.arange(4.0) * 1.5] * 3, indexing="ij"), -1).reshape(-1, 3)
    big = Atoms(numbers=[6] * len(grid), positions=grid)  # 64 atoms > 2 x 29
    lonely = Atoms("C", positions=[[0.0, 0.0, 0.0]])
    structures = [good[0], silicon, good[1], lonely, nan, overlap, big, good[2]]
    reasons = {1: "not trained on: Si", 3: "1 atom(s)", 4: "non-finite", 5: "overlapping atoms: 0 (O) and 1 (C) are 0.100 Å apart",
               6: "64 atoms; the model accepts at most 58"}
    return structures, reasons


def test_relax_reports_bad_structures_and_relaxes_the_rest(test_molecules, tiny):
    structures, reasons = _bad_and_good(test_molecules)
    res = morered.relax(structures, tiny, "ddpm", t_start=10, max_steps=3, trajectory=True)
    assert len(res) == len(structures)
    for k, (a, r) in enumerate(zip(structures, res)):
        if k in reasons:
            assert r.positions is None and r.trajectory is None
            assert reasons[k] in r.error, (k, r.error)
        else:
            assert r.error is None and r.steps == 3
            assert r.positions.shape == a.positions.shape
            np.testing.assert_allclose(r.positions.mean(0), a.positions.mean(0), atol=1e-9)
    # max_atoms overrides the default limit
    res = morered.relax(structures[:1], tiny, "ddpm", t_start=10, max_steps=1, max_atoms=2)
    assert "accepts at most 2" in res[0].error
    # one structure in, one result out
    single = morered.relax(structures[0], tiny, "ddpm", t_start=10, max_steps=1)
    assert isinstance(single, morered.RelaxResult) and single.steps == 1


def test_models_that_cannot_do_the_variant_are_refused(tmp_path, tiny, test_molecules):
    from conftest import tiny_config
    from morered.sampling.api import resolve_model
    from morered.training.task import DiffusionTask, save_model

    paths = {}
    for kind in ("ddpm", "time"):
        paths[kind] = tmp_path / f"{kind}.pt"
        save_model(DiffusionTask(tiny_config(kind), {"elements": [1, 6, 7, 8, 9], "max_atoms": 29}), paths[kind])
    ddpm, time = load_model(paths["ddpm"]), load_model(paths["time"])
    with pytest.raises(ValueError, match="variant must be"):
        resolve_model(tiny, "xyz")
    for variant in ("jt", "as", "itp"):
        with pytest.raises(ValueError, match="needs a time predictor"):
            resolve_model(ddpm, variant)
    with pytest.raises(ValueError, match="time-only"):
        resolve_model(time, "ddpm")
    with pytest.raises(ValueError, match="need a noise model and a time model"):
        pair(time, ddpm)
    # a DDPM model with a separate time model: MoreRed-AS / -ITP
    atoms = [Atoms(numbers=z, positions=x) for z, x in _inputs(test_molecules, range(2))]
    res = morered.relax(atoms, paths["ddpm"], "itp", time_model=paths["time"], max_steps=3)
    assert all(r.error is None and r.steps <= 3 for r in res)
    with pytest.raises(ValueError, match="no time head"):
        morered.score(atoms, paths["ddpm"])
    assert np.isfinite(morered.score(atoms, paths["time"])).all()


def test_optimizer_interface_relaxes_in_place(tmp_path, test_molecules, tiny):
    (z, x), = _inputs(test_molecules, [0])
    atoms = Atoms(numbers=z, positions=x)
    traj = tmp_path / "relax.extxyz"
    opt = morered.MoreRedOptimizer(atoms, tiny, "ddpm", trajectory=traj, t_start=900)
    converged = opt.run(steps=4)
    assert converged is False and opt.converged() is False and opt.nsteps == 4
    assert np.abs(atoms.positions - x).max() > 1e-2  # moved in place
    np.testing.assert_allclose(atoms.positions.mean(0), x.mean(0), atol=1e-9)
    frames = ase.io.read(traj, ":")
    assert len(frames) == 5 and [f.info["step"] for f in frames] == list(range(5))
    np.testing.assert_allclose(frames[-1].positions, atoms.positions, atol=1e-6)
    with pytest.raises(ValueError, match="cannot relax"):
        morered.MoreRedOptimizer(Atoms("C", positions=[[0, 0, 0]]), tiny, "ddpm", t_start=5).run(2)


# ------------------------------------------------------------------------ non-finite and limits
class NaNNoiseStub(StubModel):
    """A StubModel whose noise is NaN for molecules with ``nan_size`` atoms."""

    def __init__(self, steps, nan_size):
        super().__init__(steps)
        self.nan_size = nan_size

    def forward(self, batch, t_norm=None):
        out = super().forward(batch, t_norm)
        n_per_atom = batch[P.n_atoms][batch[P.idx_m]]
        out[P.eps_pred] = torch.where((n_per_atom == self.nan_size)[:, None], float("nan"), out[P.eps_pred])
        return out


@pytest.mark.parametrize("variant", ["jt", "itp"])
def test_non_finite_predictions_are_errors_not_convergence(test_molecules, variant):
    mols = _distinct_sizes(test_molecules)[:4]
    n = [len(z) for z, _ in mols]
    nan = float("nan")
    # molecule 0: NaN step at once; 1: fine; 2: NaN on its second prediction (AS/JT only);
    # 3: NaN noise
    model = NaNNoiseStub({n[0]: [nan], n[1]: [30], n[2]: [30, nan], n[3]: [30]}, nan_size=n[3])
    res = _run(variant, model, mols, t_conv=5, max_steps=50)
    for k in (0, 3):
        assert res[k].error is not None and "non-finite" in res[k].error
        assert res[k].positions is None and not res[k].converged
    assert res[1].error is None and np.isfinite(res[1].positions).all()
    if variant == "jt":
        assert res[2].error is not None and res[2].steps == 1
    else:  # ITP predicts once: the NaN second prediction is never asked for
        assert res[2].error is None


def test_relax_reports_sampler_errors(test_molecules, tiny, monkeypatch):
    from morered.sampling import api

    mols = _inputs(test_molecules, range(2))
    atoms = [Atoms(numbers=z, positions=x) for z, x in mols]
    real = api.SAMPLERS["jt"]

    def nan_first(model, molecules, schedule, options, callback=None):
        out = real(model, molecules, schedule, options, callback)
        out[0].positions, out[0].error = None, "the model gave non-finite values after 0 steps"
        return out

    monkeypatch.setitem(api.SAMPLERS, "jt", nan_first)
    res = morered.relax(atoms, tiny, "jt", max_steps=3)
    assert res[0].error and res[0].positions is None
    assert res[1].error is None and res[1].positions is not None


def test_ddpm_refuses_a_start_step_outside_the_schedule(test_molecules, tiny):
    mols = _inputs(test_molecules, range(2))
    for bad in (-1, 1001):
        with pytest.raises(ValueError, match="t_start"):
            _run("ddpm", tiny.model, mols, t_start=bad)


def test_as_refuses_a_joint_model(test_molecules, tiny):
    atoms = Atoms(numbers=_inputs(test_molecules, range(1))[0][0], positions=_inputs(test_molecules, range(1))[0][1])
    with pytest.raises(ValueError, match="AS needs separate"):
        morered.relax(atoms, tiny, "as")
    assert morered.relax(atoms, tiny, "as", time_model=tiny, max_steps=2).error is None  # a pair is fine


def test_trajectory_frames_carry_the_step_used_from_them(test_molecules, tiny, tmp_path):
    z, x = _inputs(test_molecules, range(1))[0]
    atoms = Atoms(numbers=z, positions=x)
    r = morered.relax(atoms, tiny, "itp", trajectory=True, max_steps=4)
    labels = r.frame_steps()
    assert len(labels) == len(r.trajectory) == r.steps + 1
    assert labels[: len(r.trajectory_t)] == r.trajectory_t  # frame k is where step trajectory_t[k] starts
    assert labels[0] == r.t0 and labels[-1] == r.t_final == r.t0 - r.steps
    opt = morered.MoreRedOptimizer(atoms.copy(), tiny, "itp", trajectory=tmp_path / "t.extxyz")
    opt.run(steps=4)
    frames = ase.io.read(tmp_path / "t.extxyz", ":")
    assert [f.info["t_hat"] for f in frames] == labels


def test_final_x0_step_lands_on_the_implied_clean_structure(test_molecules):
    """With the true noise as prediction, the x0 final step recovers x_0 exactly; the mean step
    only moves one step toward it."""
    from morered.diffusion.schedule import diffuse

    b = test_molecules.batch(range(1))
    x0 = b[P.R].double()
    t = torch.tensor([20])
    xt, eps = diffuse(x0, t, b[P.idx_m], SCHEDULE, generator=torch.Generator().manual_seed(0))

    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, batch, t_norm=None):
            return {P.t_pred: torch.tensor([20 / 1000.0]), P.eps_pred: eps.float()}

    mols = [(b[P.Z].numpy(), xt.numpy())]
    x0_run = _run("jt", Oracle(), mols, t_conv=25, final_step="x0")[0]
    mean_run = _run("jt", Oracle(), mols, t_conv=25, final_step="mean")[0]
    assert x0_run.converged and x0_run.steps == 1
    np.testing.assert_allclose(x0_run.positions - x0_run.positions.mean(0), x0.numpy(), atol=1e-5)
    d_x0 = np.abs(x0_run.positions - x0_run.positions.mean(0) - x0.numpy()).max()
    d_mean = np.abs(mean_run.positions - mean_run.positions.mean(0) - x0.numpy()).max()
    assert d_mean > 10 * max(d_x0, 1e-7)


def test_patience_stops_a_molecule_whose_step_stops_falling(test_molecules):
    mols = _distinct_sizes(test_molecules)[:2]
    n = [len(z) for z, _ in mols]
    # molecule 0 falls to 5 and hovers there; molecule 1 keeps falling to 0
    model = StubModel({n[0]: [40, 20, 5, 6, 5, 7, 5, 6], n[1]: [40 - 4 * k for k in range(11)]})
    res = _run("jt", model, mols, t_conv=0, patience=4, t_eq=-1, max_steps=100)
    # min 5 reached at iteration 2; no new minimum at iterations 3..6 -> stop at iteration 6
    # a plateau is said as such, not as "converged"
    assert res[0].stop == "plateau" and not res[0].converged
    assert res[0].steps == 7 and res[0].trajectory_t[:7] == [40, 20, 5, 6, 5, 7, 5]
    assert res[1].converged and res[1].stop == "converged" and res[1].trajectory_t[-1] == 0
    off = _run("jt", StubModel({n[0]: [40, 20, 5, 6, 5, 7, 5, 6], n[1]: [0]}), mols, t_conv=0, patience=0,
               t_eq=-1, max_steps=30)
    assert not off[0].converged and off[0].steps == 30 and off[0].stop == "max_steps"


def test_t_eq_leaves_inputs_already_at_equilibrium(test_molecules):
    mols = _distinct_sizes(test_molecules)[:2]
    n = [len(z) for z, _ in mols]
    model = StubModel({n[0]: [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0], n[1]: [25, 15, 0]})
    res = _run("jt", model, mols, t_conv=0, patience=0, t_eq=20, max_steps=100)
    assert res[0].converged and res[0].steps == 1 and res[0].t0 == 15  # one mean step, then stop
    assert res[0].stop == "at_equilibrium"
    assert res[1].converged and res[1].trajectory_t == [25, 15, 0]  # t0 above t_eq: relaxed on
    assert res[1].stop == "converged"


def test_tail_continues_on_the_fixed_schedule_after_the_adaptive_phase(test_molecules):
    mols = _distinct_sizes(test_molecules)[:3]
    n = [len(z) for z, _ in mols]
    model = StubModel({n[0]: [40, 20, 5, 0], n[1]: [40, 30, 25, 26, 27, 28], n[2]: [8]})
    res = _run("jt", model, mols, t_conv=0, patience=3, t_eq=10, tail_t=10, tail_steps=5, max_steps=100)
    # adaptive 40, 20, 5 (3 moves), then 0 = converged: the tail 10, 8, 6, 4, 2 (DDIM jumps of 2)
    assert res[0].trajectory_t == [40, 20, 5, 0, 10, 8, 6, 4, 2]
    assert res[0].steps == 8 and res[0].stop == "converged" and res[0].converged and res[0].t_final == 0
    # a plateau at 25 (no new minimum for 3 steps) also ends in the tail, and says "plateau"
    assert res[1].trajectory_t == [40, 30, 25, 26, 27, 28, 10, 8, 6, 4, 2]
    assert res[1].stop == "plateau" and not res[1].converged
    # an input already at equilibrium gets one step and no tail
    assert res[2].trajectory_t == [8] and res[2].steps == 1 and res[2].stop == "at_equilibrium"
    # the tail's noise prediction is conditioned on the tail's step, not on a time prediction
    assert model.calls[n[0]] == 4 and model.calls[n[1]] == 6


def test_eq_tail_gives_inputs_at_equilibrium_their_own_short_tail(test_molecules):
    mols = _distinct_sizes(test_molecules)[:2]
    n = [len(z) for z, _ in mols]
    model = StubModel({n[0]: [8], n[1]: [40, 0]})
    res = _run("jt", model, mols, t_conv=0, patience=3, t_eq=10, tail_t=10, tail_steps=5, eq_tail_t=6,
               max_steps=100)
    # at equilibrium (8 <= t_eq): no move at the first prediction, then the tail from 6 in jumps of 2
    assert res[0].trajectory_t == [8, 6, 4, 2] and res[0].steps == 3
    assert res[0].stop == "at_equilibrium" and res[0].converged
    # a molecule that relaxed adaptively still takes the long tail from tail_t
    assert res[1].trajectory_t == [40, 0, 10, 8, 6, 4, 2]
    # the eq tail is applied without the long tail too (tail_t = 0: stride 1)
    res = _run("jt", StubModel({n[0]: [8], n[1]: [40, 0]}), mols, t_conv=0, t_eq=10, eq_tail_t=3, max_steps=100)
    assert res[0].trajectory_t == [8, 3, 2, 1] and res[1].trajectory_t == [40, 0]
    # and the structure moved beyond the single mean step it takes without the eq tail
    one = _run("jt", StubModel({n[0]: [8], n[1]: [40, 0]}), mols, t_conv=0, t_eq=10, max_steps=100)
    assert one[0].trajectory_t == [8] and one[0].steps == 1
    assert np.abs(res[0].positions - one[0].positions).max() > 1e-6


def test_tail_scale_starts_each_tail_from_its_own_first_prediction(test_molecules):
    mols = _distinct_sizes(test_molecules)[:4]
    n = [len(z) for z, _ in mols]
    # first predictions 4 (small), 8, 12 and 30 (large); t_eq off, so every molecule relaxes
    model = StubModel({n[0]: [4, 0], n[1]: [8, 0], n[2]: [12, 0], n[3]: [30, 0]})
    kw = dict(t_conv=0, t_eq=-1, tail_t=6, tail_steps=3, max_steps=100)
    res = _run("jt", model, mols, tail_scale=1.5, tail_t_max=14, **kw)
    # start = clamp(round(1.5 t0), 6, 14), in 3 jumps of ceil(start / 3)
    assert res[0].trajectory_t == [4, 0, 6, 4, 2]        # 1.5 * 4 = 6 -> tail_t (the floor)
    assert res[1].trajectory_t == [8, 0, 12, 8, 4]       # 1.5 * 8 = 12, stride 4
    assert res[2].trajectory_t == [12, 0, 14, 9, 4]      # 18 clamped to tail_t_max 14, stride 5
    assert res[3].trajectory_t == [30, 0, 14, 9, 4]
    # off (tail_scale 0): every molecule takes the fixed tail from tail_t, as before
    fixed = _run("jt", StubModel({n[0]: [4, 0], n[1]: [8, 0], n[2]: [12, 0], n[3]: [30, 0]}), mols, **kw)
    assert all(r.trajectory_t[2:] == [6, 4, 2] for r in fixed)
    # a longer tail moved the molecule differently from the fixed one
    assert np.abs(res[1].positions - fixed[1].positions).max() > 1e-6


def test_tail_scale_is_checked_before_any_work():
    from morered.errors import OptionError
    from morered.sampling.api import check_relax_options

    for bad in (-0.5, 11.0, True, "1.5"):
        with pytest.raises(OptionError, match="--tail-scale"):
            check_relax_options(tail_scale=bad)
    with pytest.raises(OptionError, match="--tail-t-max"):
        check_relax_options(tail_t_max=-1)
    check_relax_options(tail_scale=1.5, tail_t_max=200)


def test_max_steps_is_said_as_such(test_molecules):
    mols = _distinct_sizes(test_molecules)[:1]
    res = _run("jt", StubModel({len(mols[0][0]): [500 - k for k in range(100)]}), mols, patience=0, max_steps=7)
    assert res[0].stop == "max_steps" and not res[0].converged and res[0].steps == 7


def test_jump_takes_deterministic_ddim_steps(test_molecules):
    """With jump = 0.5 the adaptive phase jumps t -> t/2, and a DDIM jump with the exact noise
    lands on the clean structure's diffused copy at the lower step."""
    from morered.data.batch import collate
    from morered.diffusion.schedule import diffuse

    x, z = test_molecules.molecule(0)
    b = collate([x], [z])
    x0 = b[P.R].double()
    t = torch.tensor([200])
    g = torch.Generator().manual_seed(3)
    xt, eps = diffuse(x0, t, b[P.idx_m], SCHEDULE, g)
    preds = [200, 100, 50, 25, 12, 6, 3, 1, 0]

    class Exact(nn.Module):  # predicts the true noise and a fixed sequence of steps
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.k = 0

        def forward(self, batch, t_norm=None):
            tk = preds[min(self.k, len(preds) - 1)]
            self.k += 1
            return {P.t_pred: torch.tensor([tk / 1000.0]), P.eps_pred: eps.float()}

    res = _run("jt", Exact(), [(z, xt.numpy())], jump=0.5, t_conv=0, patience=0, t_eq=-1, max_steps=50)[0]
    assert res.trajectory_t == preds and res.steps == 8
    # eps is the exact noise at every step of a deterministic DDIM chain: the end is x0
    np.testing.assert_allclose(res.positions - res.positions.mean(0), x0.numpy(), atol=1e-5)


def test_restart_renoises_a_hovering_molecule_once_by_the_forward_process(test_molecules):
    mols = _distinct_sizes(test_molecules)[:2]
    n = [len(z) for z, _ in mols]
    # molecule 0 falls to 5 and hovers; molecule 1 falls to 0 (converges, never restarted)
    model = StubModel({n[0]: [40, 20, 5, 6, 5, 7, 5, 6], n[1]: [40 - 4 * k for k in range(11)]})
    frames: dict[int, list] = {0: [], 1: []}

    def cb(ev):
        for k, x, t in zip(ev["mol"], ev["positions"], ev["t_hat"]):
            frames[k].append((t, x.copy()))

    res = _run("jt", model, mols, cb, t_conv=0, t_eq=-1, max_steps=30, stochastic=False,
               restart_patience=4, restart_t=300, max_restarts=1)
    # min 5 at iteration 2, no new minimum at 3..6 -> re-noised at iteration 6 (instead of a step)
    x_before, x_after = frames[0][5][1], frames[0][6][1]
    assert frames[0][6][0] == 5
    ratio = float(SCHEDULE.alpha_bar[300] / SCHEDULE.alpha_bar[5])
    centre = mols[0][1].mean(0)
    z = ((x_after - centre) - np.sqrt(ratio) * (x_before - centre)) / np.sqrt(1 - ratio)
    assert np.allclose(z.mean(0), 0, atol=1e-9)  # the added noise is centred: the centre stays
    assert 0.6 < z.std() < 1.4  # unit Gaussian noise scaled to the new level (n*3 draws)
    # once only (max_restarts 1): afterwards it hovers until the step limit; each frame is one step
    assert res[0].steps == 30 and res[0].stop == "max_steps" and len(frames[0]) == 30
    assert res[1].converged and res[1].trajectory_t[-1] == 0
    # a plateau rule still stops it after its restart, never before
    model2 = StubModel({n[0]: [40, 20, 5, 6, 5, 7, 5, 6], n[1]: [0]})
    res2 = _run("jt", model2, mols, t_conv=0, t_eq=-1, max_steps=100, patience=4, restart_patience=4,
                restart_t=300, max_restarts=1)
    # restart at iteration 6 (minimum forgotten), new minimum 6 at 7, none at 8..11 -> stop there
    assert res2[0].stop == "plateau" and res2[0].steps == 12
    # off by default: the same hovering molecule is never re-noised
    assert SamplerOptions().restart_patience == 0
