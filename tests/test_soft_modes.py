"""Soft-mode noise for training (MMFF94 normal-mode draws) and the MMFF94 Hessian it rests on."""

import numpy as np
import torch

from morered import properties as P
from morered.data.displacements import EV_A2_AMU_TO_CM1, mmff_hessian, mmff_minimize, normal_modes
from morered.data.molecules import Molecules
from morered.data.soft_modes import SoftModes, build_soft_modes, soft_modes_for
from morered.diffusion.schedule import NoiseSchedule, diffuse

from conftest import tiny_config


def test_mmff_hessian_is_a_hessian(test_molecules):
    """Symmetric, six zero modes and no imaginary mode at an MMFF94 minimum, and it predicts the
    gradient change of a small step (a Hessian assembled from one RDKit force field's stateful
    CalcGrad(pos) failed all three)."""
    x, z = test_molecules.molecule(0)
    xm = mmff_minimize(z, x, x, max_steps=5000)[0]
    h = mmff_hessian(z, xm)
    ev = np.linalg.eigvalsh(h)
    assert np.abs(ev[:6]).max() < 0.05 and ev[6] > 0.05  # translations + rotations, then positive modes
    w, _ = normal_modes(z, xm, h)
    wavenumbers = np.sqrt(np.abs(w)) * EV_A2_AMU_TO_CM1 * np.sign(w)
    assert wavenumbers.min() > 30 and 2800 < wavenumbers.max() < 4000  # C-H/O-H/N-H stretches on top


def test_draws_scale_and_combination(test_molecules):
    mols = test_molecules.subset(np.arange(4))
    table = build_soft_modes(mols, k=4, seed=0, progress=False)
    assert len(table) + len(table.errors) == 4 and len(table) >= 3
    batch = mols.batch(np.arange(4))
    g = torch.Generator().manual_seed(0)
    select = torch.tensor([True, True, False, True])
    eps, used = table.noise(batch[P.mol_id], batch[P.n_atoms], select, g)
    has = torch.as_tensor(np.isin(mols.ids, table.ids))
    assert used.tolist() == (select & has).tolist()
    idx = batch[P.idx_m]
    for m in range(4):
        e = eps[idx == m]
        if used[m]:
            assert abs(float(e.pow(2).mean()) - 1.0) < 1e-5  # same size as Gaussian noise
            assert float(e.mean(0).abs().max()) < 1e-5  # centred
            # a combination of the stored draws, not an isotropic draw
            a = table.offsets[np.searchsorted(table.ids, mols.ids[m])]
            d = table.draws[a: a + len(e)].transpose(0, 2, 1).astype(np.float64)  # [n, 3, k]
            d = (d - d.mean(0)).reshape(len(e) * 3, -1)
            coef, res, *_ = np.linalg.lstsq(d, e.numpy().ravel().astype(np.float64), rcond=None)
            assert np.linalg.norm(d @ coef - e.numpy().ravel()) < 1e-3 * np.linalg.norm(e.numpy())
        else:
            assert float(e.abs().max()) == 0.0


def test_soft_noise_lies_along_soft_modes(test_molecules):
    """The draws load the soft modes: most of their (mass-weighted) variance is in the lowest
    third of the MMFF94 modes, unlike isotropic noise."""
    x, z = test_molecules.molecule(1)
    table = build_soft_modes(test_molecules.subset([1]), k=8, seed=0, progress=False)
    w, modes = normal_modes(z, x, mmff_hessian(z, x))
    from ase.data import atomic_masses

    sm = np.sqrt(np.repeat(atomic_masses[z], 3))
    low = modes[:, : len(w) // 3]
    share = []
    for j in range(table.k):
        q = table.draws[:, j].ravel() * sm
        share.append(np.linalg.norm(low.T @ q) ** 2 / np.linalg.norm(modes.T @ q) ** 2)
    assert np.mean(share) > 0.8
    rng = np.random.default_rng(0)
    iso = [np.linalg.norm(low.T @ (rng.standard_normal(3 * len(z)) * sm)) ** 2
           / np.linalg.norm(modes.T @ (rng.standard_normal(3 * len(z)) * sm)) ** 2 for _ in range(8)]
    assert np.mean(iso) < 0.6


def test_unknown_or_untyped_molecules_get_gaussian_noise():
    # a lone carbon pair: MMFF94 cannot type it -> recorded as an error, never silently dropped
    mols = Molecules.from_lists([np.array([[0.0, 0, 0], [3.0, 0, 0]])], [np.array([6, 6])], ids=[5])
    table = build_soft_modes(mols, k=2, progress=False)
    assert len(table) == 0 and 5 in table.errors
    eps, used = table.noise(torch.tensor([5]), torch.tensor([2]), torch.tensor([True]))
    assert not used.any() and float(eps.abs().max()) == 0.0


def test_cache_roundtrip(tmp_path, test_molecules):
    a = soft_modes_for(test_molecules, n=3, k=2, seed=1, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("soft_modes-*.npz"))
    assert len(files) == 1 and len(a.ids) + len(a.errors) == 3
    b = SoftModes.load(files[0])
    np.testing.assert_array_equal(a.draws, b.draws)
    assert b.settings["hessian"].startswith("MMFF94")


def test_diffuse_noise_replacement_keeps_other_atoms():
    s = NoiseSchedule()
    x0 = torch.randn(5, 3, dtype=torch.float64)
    idx = torch.tensor([0, 0, 0, 1, 1])
    t = torch.tensor([100, 100])
    plain, eps0 = diffuse(x0, t, idx, s, torch.Generator().manual_seed(3))
    noise = torch.full((5, 3), 7.0, dtype=torch.float64)
    mask = torch.tensor([True, True, True, False, False])
    xt, eps = diffuse(x0, t, idx, s, torch.Generator().manual_seed(3), noise, mask)
    torch.testing.assert_close(eps[3:], eps0[3:])
    torch.testing.assert_close(eps[:3], noise[:3])
    ab = s.alpha_bar[100]
    torch.testing.assert_close(xt[:3], ab.sqrt() * x0[:3] + (1 - ab).sqrt() * noise[:3])


def test_training_uses_soft_noise_and_validation_does_not(test_molecules):
    from morered.training.task import DiffusionTask

    cfg = tiny_config("jt", **{"diffusion.soft_modes": {"fraction": 1.0, "t_max": 1000, "molecules": 0, "draws": 2},
                               "diffusion.low_t_fraction": 0.0})
    table = build_soft_modes(test_molecules, k=2, progress=False)
    task = DiffusionTask(cfg, {"elements": [1, 6, 7, 8, 9], "max_atoms": 29}, soft_modes=table)
    batch = test_molecules.batch(np.arange(len(test_molecules)))
    seen = {}

    def spy(x0, t, idx_m, schedule, generator=None, noise=None, noise_mask=None):
        seen["mask"] = noise_mask
        return diffuse(x0, t, idx_m, schedule, generator, noise, noise_mask)

    import morered.training.task as task_module

    orig = task_module.diffuse
    task_module.diffuse = spy
    try:
        task.losses(task.model, batch)
        n_used = int(seen["mask"].sum())
        assert n_used == int(np.isin(test_molecules.ids, table.ids).repeat(test_molecules.n_atoms()).sum()) > 0
        task.losses(task.ema, batch, generator=torch.Generator().manual_seed(0))  # validation
        assert seen["mask"] is None
    finally:
        task_module.diffuse = orig


def test_soft_modes_refused_for_a_force_field(tmp_path):
    import pytest

    from morered.errors import OptionError
    from morered.training.train import train

    cfg = tiny_config("forcefield", **{"diffusion.soft_modes": {"fraction": 0.5, "t_max": 300, "molecules": 10,
                                                                "draws": 2}})
    with pytest.raises(OptionError, match="soft_modes"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
