"""Output heads on top of a representation: equivariant noise, invariant time step."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from morered.data.batch import centre, scatter_mean
from morered.nn.blocks import Dense, mlp


class GatedEquivariantBlock(nn.Module):
    """Gated equivariant block (PaiNN paper, fig. 3): vector outputs gated by scalars.

    ``(s [n, n_sin], v [n, 3, n_vin]) -> (s [n, n_sout], v [n, 3, n_vout])``
    """

    def __init__(self, n_sin, n_vin, n_sout, n_vout, n_hidden, sactivation=None):
        super().__init__()
        self.n_sout, self.n_vout = n_sout, n_vout
        self.mix_vectors = Dense(n_vin, 2 * n_vout, bias=False)
        self.scalar_net = nn.Sequential(Dense(n_sin + n_vout, n_hidden, F.silu), Dense(n_hidden, n_sout + n_vout))
        self.sactivation = sactivation

    def forward(self, s, v):
        vV, vW = torch.split(self.mix_vectors(v), self.n_vout, dim=-1)
        # invariant [n, n_vout]; sqrt(sum(square)) is ~100x faster than linalg.vector_norm over
        # the middle axis on a CPU; the clamp keeps the gradient finite at a zero vector
        vV_norm = torch.sqrt((vV * vV).sum(dim=-2).clamp_min(1e-30))
        x = self.scalar_net(torch.cat([s, vV_norm], dim=-1))
        s_out, gate = torch.split(x, [self.n_sout, self.n_vout], dim=-1)
        v_out = gate[:, None, :] * vW
        if self.sactivation is not None:
            s_out = self.sactivation(s_out)
        return s_out, v_out


class NoiseHead(nn.Module):
    """eps_theta(x_t, t): gated equivariant blocks, features halved each layer, t/T appended to
    the scalar input; one 3-vector per atom, re-centred per molecule (equivariant)."""

    def __init__(self, n_features: int, n_layers: int = 3):
        super().__init__()
        widths = [n_features] + [max(1, n_features // 2**k) for k in range(1, n_layers)] + [1]
        blocks = []
        for k in range(n_layers):
            n_sin = widths[k] + (1 if k == 0 else 0)
            last = k == n_layers - 1
            blocks.append(
                GatedEquivariantBlock(
                    n_sin, widths[k], widths[k + 1], widths[k + 1], n_hidden=widths[k],
                    sactivation=None if last else F.silu,
                )
            )
        self.blocks = nn.ModuleList(blocks)

    def forward(self, s, v, t_norm_atom, idx_m):
        # s [n_atoms, F], v [n_atoms, 3, F], t_norm_atom [n_atoms]
        s = torch.cat([s, t_norm_atom[:, None].to(s.dtype)], dim=-1)
        for block in self.blocks:
            s, v = block(s, v)
        return centre(v[..., 0], idx_m)  # [n_atoms, 3]


class TimeHead(nn.Module):
    """t_phi(x): atom-wise MLP on scalar features (halved each layer); per-atom values and their
    per-molecule mean (invariant).  Trained against t/T without squashing; clamp at inference."""

    def __init__(self, n_features: int, n_layers: int = 3):
        super().__init__()
        self.net = mlp(n_features, 1, n_layers)

    def forward(self, s, idx_m, n_mol):
        t_atom = self.net(s)[:, 0]  # [n_atoms]
        return t_atom, scatter_mean(t_atom, idx_m, n_mol)
