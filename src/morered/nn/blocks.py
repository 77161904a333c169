"""Small building blocks: dense layers, radial bases, cutoffs."""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class Dense(nn.Linear):
    """Linear layer with an optional activation (Xavier init, zero bias)."""

    def __init__(self, n_in: int, n_out: int, activation=None, bias: bool = True):
        self.activation = activation
        super().__init__(n_in, n_out, bias=bias)

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        y = super().forward(x)
        return self.activation(y) if self.activation is not None else y


def mlp(n_in: int, n_out: int, n_layers: int, activation=F.silu) -> nn.Sequential:
    """MLP whose hidden width halves at every layer: n_in, n_in/2, ..., n_out (SchNetPack build_mlp)."""
    widths = [n_in] + [max(n_out, n_in // 2**k) for k in range(1, n_layers)] + [n_out]
    layers = [Dense(widths[k], widths[k + 1], activation) for k in range(n_layers - 1)]
    layers.append(Dense(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


class GaussianRBF(nn.Module):
    """n_rbf Gaussians with centres evenly spaced on [0, cutoff] and width = spacing."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        centres = torch.linspace(0, cutoff, n_rbf)
        self.register_buffer("centres", centres)
        self.register_buffer("width", (centres[1] - centres[0]).abs())

    def forward(self, d: torch.Tensor) -> torch.Tensor:  # [n_edges] -> [n_edges, n_rbf]
        return torch.exp(-0.5 * ((d[:, None] - self.centres) / self.width) ** 2)


class SincRBF(nn.Module):
    """sin(n pi d / cutoff) / d, n = 1..n_rbf (PaiNN paper, DimeNet)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.register_buffer("freq", torch.arange(1, n_rbf + 1) * math.pi / cutoff)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        d = d[:, None]
        return torch.sin(self.freq * d) / d.clamp_min(1e-9)


RADIAL = {"gaussian": GaussianRBF, "sinc": SincRBF}


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi d / cutoff) + 1) for d < cutoff, else 0."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(d * math.pi / cutoff) + 1.0), torch.zeros_like(d))
