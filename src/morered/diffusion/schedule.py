"""Variance-preserving noise schedules (DDPM) in float64, forward process and reverse kernel."""

from __future__ import annotations

import math

import numpy as np
import torch

from morered.data.batch import centre, centred_noise


def _polynomial(T: int, power: float = 2.0, s: float = 1e-5) -> np.ndarray:
    """alpha_bar_k = (1 - (k/T)^power)^2 on k = 0..T, step ratios clipped at 0.001,
    then squeezed to ``(1 - 2s) alpha_bar + s`` (EDM, Hoogeboom et al. 2022, eq. in app. B)."""
    tau = np.arange(T + 1, dtype=np.float64) / T
    ab = (1.0 - tau**power) ** 2
    return _clip_and_squeeze(ab, s)


def _clip_and_squeeze(ab: np.ndarray, s: float) -> np.ndarray:
    ratios = np.concatenate([[ab[0]], ab[1:] / ab[:-1]])
    ab = np.cumprod(np.clip(ratios, 0.001, 1.0))
    return (1.0 - 2.0 * s) * ab + s


def _cosine(T: int, s: float = 8e-3, **_) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal 2021): alpha_bar = cos^2((tau + s) / (1 + s) pi/2)."""
    tau = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((tau + s) / (1 + s) * math.pi / 2) ** 2
    return _clip_and_squeeze(f / f[0], 1e-5)


def _linear(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2, **_) -> np.ndarray:
    """Linear betas (Ho et al. 2020), scaled so that T = 1000 gives the original values."""
    scale = 1000.0 / T
    betas = np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


SCHEDULES = {"polynomial": _polynomial, "cosine": _cosine, "linear": _linear}


class NoiseSchedule:
    """A DDPM noise schedule with T steps, held in float64.

    ``alpha_bar[t]`` for t = 0..T (index 0 is the clean data), ``beta[t] = 1 - alpha_bar[t] /
    alpha_bar[t-1]`` for t = 1..T (``beta[0] = 0``).

    Args:
        name: ``polynomial`` (default, power 2, s = 1e-5), ``cosine`` or ``linear``.
        T: number of diffusion steps.
        **kwargs: passed to the schedule function (e.g. ``power``, ``s``).
    """

    def __init__(self, name: str = "polynomial", T: int = 1000, **kwargs):
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
        self.name, self.T, self.kwargs = name, int(T), dict(kwargs)
        ab = SCHEDULES[name](self.T, **kwargs)
        self.alpha_bar = torch.as_tensor(ab, dtype=torch.float64)  # [T+1]
        alpha = torch.ones_like(self.alpha_bar)
        alpha[1:] = self.alpha_bar[1:] / self.alpha_bar[:-1]
        self.alpha = alpha  # [T+1], alpha[0] = 1
        self.beta = 1.0 - alpha  # [T+1], beta[0] = 0
        # posterior variance beta_t (1 - ab_{t-1}) / (1 - ab_t), DDPM eq. 7; 0 at t = 0
        var = torch.zeros_like(self.alpha_bar)
        var[1:] = self.beta[1:] * (1 - self.alpha_bar[:-1]) / (1 - self.alpha_bar[1:])
        var[1] = 0.0  # no noise on the last step (x_0 is returned as the mean)
        self.posterior_variance = var

    def to_dict(self) -> dict:
        """Plain-data description, stored in checkpoints."""
        return {"name": self.name, "T": self.T, **self.kwargs}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseSchedule":
        d = dict(d)
        return cls(d.pop("name"), d.pop("T"), **d)

    def noise_std(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(1 - alpha_bar_t) for integer steps ``t`` (float64)."""
        return torch.sqrt(1.0 - self.alpha_bar[t.long().cpu()]).to(t.device)

    def step_for_std(self, std: float) -> int:
        """Smallest step t whose noise standard deviation sqrt(1 - alpha_bar_t) >= ``std``."""
        s = torch.sqrt(1.0 - self.alpha_bar)
        return int(torch.searchsorted(s, torch.tensor([std], dtype=torch.float64)).clamp(max=self.T))


def diffuse(
    x0: torch.Tensor,
    t: torch.Tensor,
    idx_m: torch.Tensor,
    schedule: NoiseSchedule,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward process q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I) with centred noise.

    ``noise`` (with the atom mask ``noise_mask``) replaces the Gaussian noise of those atoms (soft-mode
    training, :mod:`morered.data.soft_modes`); the Gaussian draw is made either way, so the other
    atoms get the same noise as without it.

    Args:
        x0: centred positions ``[n_atoms, 3]`` (Å).
        t: step of each molecule ``[n_mol]`` (long, 0..T).
        idx_m: molecule index of each atom ``[n_atoms]``.
    Returns:
        ``(x_t, eps)``, both ``[n_atoms, 3]`` in the dtype of ``x0``; ``eps`` has zero mean per molecule.
    """
    eps = centred_noise(x0.shape, idx_m, generator=generator, dtype=x0.dtype, device=x0.device)
    if noise is not None:  # [n_atoms, 3] replacement noise where ``noise_mask`` [n_atoms] is set
        eps = torch.where(noise_mask[:, None].to(eps.device), noise.to(eps), eps)
    ab = schedule.alpha_bar[t.long().cpu()].to(x0.device)[idx_m].unsqueeze(-1)  # [n_atoms, 1] f64
    xt = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    return xt.to(x0.dtype), eps


def reverse_step(
    x: torch.Tensor,
    eps_pred: torch.Tensor,
    t: torch.Tensor,
    idx_m: torch.Tensor,
    schedule: NoiseSchedule,
    noise_scale: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One reverse DDPM step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2), in float64.

    mean = (x_t - beta_t / sqrt(1 - ab_t) * eps_pred) / sqrt(alpha_t); the posterior variance
    sigma_t^2 = beta_t (1 - ab_{t-1}) / (1 - ab_t) is scaled by ``noise_scale`` (0 gives the
    deterministic mean step) and is zero where t = 1.  Molecules with t = 0 are left unchanged.

    Args:
        x: positions ``[n_atoms, 3]``; eps_pred: predicted noise ``[n_atoms, 3]``.
        t: step of each molecule ``[n_mol]`` (long).
    Returns:
        centred positions ``[n_atoms, 3]`` in float64.
    """
    t = t.long().cpu()
    dev = x.device
    beta = schedule.beta[t].to(dev)[idx_m].unsqueeze(-1)
    ab = schedule.alpha_bar[t].to(dev)[idx_m].unsqueeze(-1)
    alpha = schedule.alpha[t].to(dev)[idx_m].unsqueeze(-1)
    x = x.double()
    # t = 0 has beta = 0 and ab ~ 1: guard the division, the molecule is not moved
    coef = torch.where(beta > 0, beta / torch.sqrt((1 - ab).clamp_min(1e-30)), torch.zeros_like(beta))
    mean = (x - coef * eps_pred.double()) / alpha.sqrt()
    sigma = schedule.posterior_variance[t].to(dev).sqrt()[idx_m].unsqueeze(-1)
    sigma = sigma * torch.as_tensor(noise_scale, dtype=torch.float64, device=dev)
    if bool((sigma > 0).any()):
        z = centred_noise(x.shape, idx_m, generator=generator, dtype=torch.float64, device=dev)
        mean = mean + sigma * z
    return centre(mean, idx_m)


def predict_x0(
    x: torch.Tensor, eps_pred: torch.Tensor, t: torch.Tensor, idx_m: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """The clean structure implied by a noise prediction (DDPM eq. 15), in float64:
    x_0 = (x_t - sqrt(1 - ab_t) eps_pred) / sqrt(ab_t), centred.  ``t``: ``[n_mol]`` steps."""
    ab = schedule.alpha_bar[t.long().cpu()].to(x.device)[idx_m].unsqueeze(-1)
    x0 = (x.double() - (1 - ab).sqrt() * eps_pred.double()) / ab.sqrt()
    return centre(x0, idx_m)


def ddim_step(
    x: torch.Tensor, eps_pred: torch.Tensor, t: torch.Tensor, s: torch.Tensor, idx_m: torch.Tensor,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """Deterministic DDIM jump x_t -> x_s (Song et al. 2021, eta = 0), in float64:
    x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s) eps_pred with x0_hat from :func:`predict_x0`.
    ``s = 0`` lands on x0_hat itself.  ``t``, ``s``: ``[n_mol]`` steps with s <= t."""
    x0 = predict_x0(x, eps_pred, t, idx_m, schedule)
    ab_s = schedule.alpha_bar[s.long().cpu()].to(x.device)[idx_m].unsqueeze(-1)
    ab_s = torch.where(s.to(x.device)[idx_m, None] == 0, torch.ones_like(ab_s), ab_s)
    return centre(ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps_pred.double(), idx_m)
