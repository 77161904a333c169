"""PaiNN: polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Scalar features ``s`` ``[n_atoms, F]`` and vector features ``v`` ``[n_atoms, 3, F]``;
rotations act on the middle axis of ``v`` only, so every update below is equivariant.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from morered.nn.blocks import RADIAL, Dense, cosine_cutoff


class PaiNNInteraction(nn.Module):
    """Message block (PaiNN eq. 7-8): continuous filters from distances mix neighbour features."""

    def __init__(self, n_features: int):
        super().__init__()
        self.n = n_features
        self.phi = nn.Sequential(Dense(n_features, n_features, F.silu), Dense(n_features, 3 * n_features))

    def forward(self, s, v, W_ij, dir_ij, i, j):
        # s [n_atoms, F], v [n_atoms, 3, F], W_ij [n_edges, 3F], dir_ij [n_edges, 3]
        x = self.phi(s)[j] * W_ij  # [n_edges, 3F]
        ds, dvv, dvs = torch.split(x, self.n, dim=-1)
        dv = dvv[:, None, :] * dir_ij[:, :, None] + dvs[:, None, :] * v[j]  # [n_edges, 3, F]
        s = s.index_add(0, i, ds)
        v = v.index_add(0, i, dv)
        return s, v


class PaiNNMixing(nn.Module):
    """Update block (PaiNN eq. 9-11): mixes channels within each atom."""

    def __init__(self, n_features: int, epsilon: float = 1e-8):
        super().__init__()
        self.n = n_features
        self.mix_v = Dense(n_features, 2 * n_features, bias=False)
        self.intra = nn.Sequential(Dense(2 * n_features, n_features, F.silu), Dense(n_features, 3 * n_features))
        self.epsilon = epsilon

    def forward(self, s, v):
        vV, vW = torch.split(self.mix_v(v), self.n, dim=-1)  # [n_atoms, 3, F] each
        vV_norm = torch.sqrt((vV**2).sum(dim=-2) + self.epsilon)  # [n_atoms, F]
        x = self.intra(torch.cat([s, vV_norm], dim=-1))
        ds, dv, dsv = torch.split(x, self.n, dim=-1)
        v = v + dv[:, None, :] * vW
        s = s + ds + dsv * (vV * vW).sum(dim=-2)
        return s, v


class PaiNN(nn.Module):
    """PaiNN representation.

    Args:
        n_features: width F of scalar and vector features.
        n_interactions: number of interaction (message + update) blocks.
        n_rbf: number of radial basis functions.
        radial: ``gaussian`` (reference) or ``sinc``.
        cutoff: cosine cutoff radius (Å); applied even on the full graph.
        max_z: largest atomic number the embedding accepts.
        shared_filters: share the distance filter network between blocks.
    Returns from ``forward``: ``(s [n_atoms, F], v [n_atoms, 3, F])``.
    """

    def __init__(
        self,
        n_features: int = 128,
        n_interactions: int = 3,
        n_rbf: int = 20,
        radial: str = "gaussian",
        cutoff: float = 5.0,
        max_z: int = 100,
        shared_filters: bool = False,
    ):
        super().__init__()
        self.n_features, self.n_interactions, self.cutoff = n_features, n_interactions, cutoff
        self.embedding = nn.Embedding(max_z + 1, n_features)
        self.radial = RADIAL[radial](n_rbf, cutoff)
        self.shared_filters = shared_filters
        n_filters = 3 * n_features * (1 if shared_filters else n_interactions)
        self.filter_net = Dense(n_rbf, n_filters)
        self.interactions = nn.ModuleList(PaiNNInteraction(n_features) for _ in range(n_interactions))
        self.mixing = nn.ModuleList(PaiNNMixing(n_features) for _ in range(n_interactions))

    def forward(self, Z: torch.Tensor, positions: torch.Tensor, edges: torch.Tensor):
        i, j = edges[0], edges[1]
        r_ij = positions[j] - positions[i]  # [n_edges, 3]
        d_ij = torch.linalg.vector_norm(r_ij, dim=-1)
        dir_ij = r_ij / d_ij.clamp_min(1e-9)[:, None]
        W = self.filter_net(self.radial(d_ij)) * cosine_cutoff(d_ij, self.cutoff)[:, None]
        W = W.split(3 * self.n_features, dim=-1) if not self.shared_filters else [W] * self.n_interactions
        s = self.embedding(Z)
        v = torch.zeros(s.shape[0], 3, s.shape[1], dtype=s.dtype, device=s.device)
        for k, (inter, mix) in enumerate(zip(self.interactions, self.mixing)):
            s, v = inter(s, v, W[k], dir_ij, i, j)
            s, v = mix(s, v)
        return s, v
