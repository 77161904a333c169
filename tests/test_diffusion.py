"""Schedules (exact endpoints, monotone, beta in (0, 1)) and the forward / reverse process."""

import math

import numpy as np
import pytest
import torch

from morered.data.batch import scatter_mean
from morered.diffusion.schedule import SCHEDULES, NoiseSchedule, diffuse, reverse_step


def test_polynomial_endpoints_exact():
    s = NoiseSchedule("polynomial", 1000, s=1e-5)
    ab = s.alpha_bar
    assert ab.dtype == torch.float64
    assert ab[0].item() == pytest.approx(1 - 1e-5, abs=1e-15)  # (1 - 2s) * 1 + s
    # the last ratio (0) is clipped to 0.001: ab_T = (1 - 2s) * 0.001 * (1 - tau_{T-1}^2)^2 + s
    raw_prev = (1 - 0.999**2) ** 2
    assert ab[-1].item() == pytest.approx((1 - 2e-5) * 0.001 * raw_prev + 1e-5, rel=1e-12)
    # interior: (1 - tau^2)^2 squeezed, where no clipping happened
    tau = 0.5
    assert ab[500].item() == pytest.approx((1 - 2e-5) * (1 - tau**2) ** 2 + 1e-5, rel=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_monotone_and_beta_in_range(name):
    s = NoiseSchedule(name, 1000)
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])
    beta = s.beta[1:]
    assert torch.all(beta > 0) and torch.all(beta < 1)
    assert s.posterior_variance[1] == 0  # no noise on the last step
    assert torch.all(s.posterior_variance[2:] > 0)
    assert NoiseSchedule.from_dict(s.to_dict()).alpha_bar.equal(s.alpha_bar)


def test_noise_levels_match_spec():
    """SPEC §2: t = 50, 100, 150 displace a molecule by about 0.12, 0.25, 0.38 Å RMSD."""
    s = NoiseSchedule()
    for t, rmsd in [(50, 0.12), (100, 0.25), (150, 0.38)]:
        assert math.sqrt(3 * (1 - s.alpha_bar[t])) == pytest.approx(rmsd, abs=0.015)


def test_forward_variance_and_centred_noise(test_molecules):
    """x_t - sqrt(ab) x_0 has per-coordinate variance 1 - ab (times (n-1)/n from centring)."""
    s = NoiseSchedule()
    batch = test_molecules.batch(range(8))
    x0, idx_m = batch["positions"].double(), batch["idx_m"]
    n = batch["n_atoms"].double()[idx_m][:, None]
    g = torch.Generator().manual_seed(0)
    for t_val in (10, 100, 500, 900):
        t = torch.full((8,), t_val)
        dev = []
        for _ in range(200):
            xt, eps = diffuse(x0, t, idx_m, s, generator=g)
            assert scatter_mean(eps, idx_m).abs().max() < 1e-12
            dev.append(((xt - s.alpha_bar[t_val].sqrt() * x0) ** 2 * n / (n - 1)))
        var = torch.cat(dev).mean().item()
        # 200 x 8 molecules x ~18 atoms x 3 coords: relative standard error ~ 0.5 %
        assert var == pytest.approx(1 - s.alpha_bar[t_val].item(), rel=0.03)


def test_reverse_step_with_true_noise_recovers_mean(test_molecules):
    """With the true noise and no sampling noise, one step from t gives the posterior mean, and
    from t = 1 it returns x_0 up to the schedule's precision."""
    s = NoiseSchedule()
    batch = test_molecules.batch(range(4))
    x0, idx_m = batch["positions"].double(), batch["idx_m"]
    t = torch.ones(4, dtype=torch.long)
    xt, eps = diffuse(x0, t, idx_m, s, generator=torch.Generator().manual_seed(0))
    x_prev = reverse_step(xt, eps, t, idx_m, s, noise_scale=1.0)
    # alpha_bar_0 = 1 - s, not 1, so eps cancels only up to ~s / sqrt(1 - ab_1) ~ 3e-3 per unit noise
    assert (x_prev - x0).abs().max() < 0.02
    # the mean formula exactly, at t = 50
    t = torch.full((4,), 50)
    xt, eps = diffuse(x0, t, idx_m, s, generator=torch.Generator().manual_seed(1))
    expect = (xt - s.beta[50] / (1 - s.alpha_bar[50]).sqrt() * eps) / s.alpha[50].sqrt()
    assert torch.allclose(reverse_step(xt, eps, t, idx_m, s, noise_scale=0.0), expect, atol=1e-12)
    # with noise: the spread around the mean is the posterior std
    draws = torch.stack([reverse_step(xt, eps, t, idx_m, s, 1.0, torch.Generator().manual_seed(k)) for k in range(300)])
    n = batch["n_atoms"].double()[idx_m][:, None]
    var = ((draws - expect) ** 2 * n / (n - 1)).mean().item()
    assert var == pytest.approx(s.posterior_variance[50].item(), rel=0.05)
    # t = 0: nothing moves
    same = reverse_step(x0, torch.randn_like(x0), torch.zeros(4, dtype=torch.long), idx_m, s)
    assert torch.allclose(same, x0)


def _exact_chain(x0, idx_m, s, t_start, step=reverse_step):
    """Deterministic reverse chain from x_{t_start}, fed at every step the exact noise of the
    current positions relative to the known clean structure x0."""
    n = int(idx_m.max()) + 1
    xt, _ = diffuse(x0, torch.full((n,), t_start), idx_m, s, generator=torch.Generator().manual_seed(7))
    x = xt
    for t_val in range(t_start, 0, -1):
        t = torch.full((n,), t_val)
        eps = (x - s.alpha_bar[t_val].sqrt() * x0) / (1 - s.alpha_bar[t_val]).sqrt()
        x = step(x, eps, t, idx_m, s, noise_scale=0.0)
    return xt, x


def _one_step_error(x0, idx_m, s, step=reverse_step):
    """Largest deviation of one deterministic step with the exact noise from the DDPM posterior
    mean written in terms of x0 and eps: sqrt(ab_{t-1}) x0 + sqrt(a_t) (1 - ab_{t-1}) / sqrt(1 - ab_t) eps."""
    n = int(idx_m.max()) + 1
    err = 0.0
    for t_val in (2, 30, 100, 400):
        t = torch.full((n,), t_val)
        xt, eps = diffuse(x0, t, idx_m, s, generator=torch.Generator().manual_seed(t_val))
        ab, ab_prev, a = s.alpha_bar[t_val], s.alpha_bar[t_val - 1], s.alpha[t_val]
        expect = ab_prev.sqrt() * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab).sqrt() * eps
        err = max(err, float((step(xt, eps, t, idx_m, s, noise_scale=0.0) - expect).abs().max()))
    return err


def test_reverse_chain_with_exact_noise_returns_the_structure(test_molecules):
    """From t = 100 (0.25 Å RMSD), 100 deterministic reverse steps fed the exact noise land on the
    clean structure within 1e-3 Å, and every single step lands on the DDPM posterior mean.  The
    next test shows that these checks fail without a reverse step, with the noise sign flipped,
    or with the alpha-bar index off by one."""
    s = NoiseSchedule()
    batch = test_molecules.batch(range(4))
    x0, idx_m = batch["positions"].double(), batch["idx_m"]
    xt, x = _exact_chain(x0, idx_m, s, 100)
    assert (xt - x0).abs().max() > 0.2  # the start is far
    assert (x - x0).abs().max() < 1e-3
    assert _one_step_error(x0, idx_m, s) < 1e-6


@pytest.mark.parametrize("bug", ["no step", "sign", "index"])
def test_reverse_chain_catches_broken_steps(test_molecules, bug):
    s = NoiseSchedule()
    batch = test_molecules.batch(range(4))
    x0, idx_m = batch["positions"].double(), batch["idx_m"]

    def broken(x, eps, t, idx_m, s, noise_scale=0.0):
        if bug == "no step":
            return x
        if bug == "sign":
            return reverse_step(x, -eps, t, idx_m, s, noise_scale)
        # alpha-bar of the previous step where the current one belongs
        ab = s.alpha_bar[t - 1][idx_m, None]
        beta = s.beta[t][idx_m, None]
        return (x - beta / (1 - ab).sqrt() * eps) / s.alpha[t][idx_m, None].sqrt()

    _, x = _exact_chain(x0, idx_m, s, 100, step=broken)
    assert (x - x0).abs().max() > 1e-3 or _one_step_error(x0, idx_m, s, step=broken) > 1e-4
