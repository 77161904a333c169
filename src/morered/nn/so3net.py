"""SO3Net: a spherical-harmonics equivariant representation (SchNetPack's ``SO3net``; SPEC §13).

Features ``x`` ``[n_atoms, (lmax+1)^2, F]`` hold, per feature channel, one coefficient per real
spherical harmonic Y_lm, ordered l = 0..lmax and m = -l..l.  A rotation R acts on them through the
block-diagonal Wigner matrix D(R) (``Y(R r) = D(R) Y(r)``), so every layer below is a map that
commutes with D: linear maps over the feature axis only, Clebsch-Gordan couplings, and gates
computed from the l = 0 part.  Only couplings with l1 + l2 + l3 even are kept (parity selection):
then every degree l transforms with parity (-1)^l under reflections too, the l = 1 part is a
true vector and the l = 0 part a true scalar, and the model is O(3)- (not only SO(3)-) equivariant.

The Clebsch-Gordan coefficients of the real basis are computed here, without sympy, as Gaunt
integrals (∫ Y_a Y_b Y_c over the sphere, exact by product quadrature): for a parity-allowed triple
(l1, l2, l3) the Gaunt tensor is the one SO(3)-invariant tensor of that shape up to a factor, which
is fixed so that each coupling block has the norm of the Clebsch-Gordan block (sum of squares
2 l3 + 1).  Parity-forbidden triples have vanishing Gaunt integrals, which is the parity selection.

The interface is PaiNN's: ``forward(Z, positions, edges) -> (s [n_atoms, F], v [n_atoms, 3, F])``
with ``s`` the l = 0 part and ``v`` the l = 1 part reordered from (m = -1, 0, 1) = (y, z, x) to
(x, y, z), so the noise and time heads work unchanged.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from morered.nn.blocks import RADIAL, cosine_cutoff


def sh_degrees(lmax: int) -> np.ndarray:
    """Degree l of each of the (lmax+1)^2 components, in the order l = 0..lmax, m = -l..l."""
    return np.concatenate([np.full(2 * l + 1, l) for l in range(lmax + 1)])


def real_spherical_harmonics(directions: torch.Tensor, lmax: int) -> torch.Tensor:
    """Orthonormal real spherical harmonics ``[n, (lmax+1)^2]`` of unit vectors ``[n, 3]``.

    Y_l0 = N_l0 Q_l^0(z); Y_lm = sqrt(2) N_lm Q_l^m(z) Re (x + i y)^m (m > 0) and Im (x + i y)^|m|
    (m < 0), with Q_l^m = P_l^m / (1 - z^2)^(m/2) (associated Legendre without the Condon-Shortley
    phase) and N_lm = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!).  Polynomials in x, y, z only, so smooth and
    differentiable everywhere; l = 1 is sqrt(3/(4 pi)) (y, z, x).
    """
    x, y, z = directions.unbind(-1)
    # Re / Im of (x + i y)^m
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for m in range(1, lmax + 1):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(x * c - y * s)
        sin_m.append(x * s + y * c)
    # Q[l][m] by the standard recurrences in l
    Q = [[None] * (lmax + 1) for _ in range(lmax + 1)]
    for m in range(lmax + 1):
        Q[m][m] = torch.full_like(z, float(np.prod(np.arange(1, 2 * m, 2))) if m else 1.0)
        if m + 1 <= lmax:
            Q[m + 1][m] = (2 * m + 1) * z * Q[m][m]
        for l in range(m + 2, lmax + 1):
            Q[l][m] = ((2 * l - 1) * z * Q[l - 1][m] - (l + m - 1) * Q[l - 2][m]) / (l - m)
    out = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            a = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a))
            if m == 0:
                out.append(norm * Q[l][0])
            else:
                out.append(math.sqrt(2.0) * norm * Q[l][a] * (cos_m[a] if m > 0 else sin_m[a]))
    return torch.stack(out, dim=-1)


def sphere_quadrature(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[n, 3]`` and weights ``[n]`` (summing to 4 pi) integrating every polynomial of
    total degree <= ``degree`` on the unit sphere exactly: Gauss-Legendre in z times a uniform grid
    in the azimuth."""
    nz = degree // 2 + 1
    nphi = degree + 1
    z, wz = np.polynomial.legendre.leggauss(nz)
    phi = 2 * np.pi * np.arange(nphi) / nphi
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    rho = np.sqrt(1 - zz**2)
    pts = np.stack([rho * np.cos(pp), rho * np.sin(pp), zz], -1).reshape(-1, 3)
    w = (wz[:, None] * np.full(nphi, 2 * np.pi / nphi)[None, :]).reshape(-1)
    return pts, w


class _Constant:
    """A float64 constant handed out in the dtype and device of the caller, converted once per
    (dtype, device) from the float64 original: a buffer would be rounded to float32 by
    ``model.float()`` and stay rounded after a later ``model.double()``."""

    def __init__(self, value: torch.Tensor):
        self.value, self.cache = value, {}

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self.cache:
            self.cache[key] = self.value.to(dtype=like.dtype, device=like.device)
        return self.cache[key]


@lru_cache(maxsize=8)
def clebsch_gordan(lmax: int) -> np.ndarray:
    """Real-basis coupling tensor ``C[a, b, c]`` (a, b, c index (l, m) up to lmax), float64.

    Parity-allowed triples only; each (l1, l2, l3) block scaled to sum of squares 2 l3 + 1 (as the
    Clebsch-Gordan coefficients), with the sign of its Gaunt integral.
    """
    pts, w = sphere_quadrature(3 * lmax)
    Y = real_spherical_harmonics(torch.from_numpy(pts), lmax).numpy()  # [n, S]
    G = np.einsum("n,na,nb,nc->abc", w, Y, Y, Y)
    G[np.abs(G) < 1e-12] = 0.0
    deg = sh_degrees(lmax)
    C = np.zeros_like(G)
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                if (l1 + l2 + l3) % 2:
                    continue
                blk = np.ix_(deg == l1, deg == l2, deg == l3)
                g = G[blk]
                C[blk] = g * math.sqrt((2 * l3 + 1) / (g**2).sum())
    return C


class SO3Coupling(nn.Module):
    """Channel-wise coupling ``y[c, f] = sum_ab C[a, b, c] x1[a, f] x2[b, f]`` on the sparse
    non-zeros of C; ``x1, x2`` ``[n, S, F]``."""

    def __init__(self, lmax: int):
        super().__init__()
        C = torch.from_numpy(clebsch_gordan(lmax))
        a, b, c = torch.nonzero(C, as_tuple=True)
        self.n_sh = (lmax + 1) ** 2
        self.cg = _Constant(C[a, b, c])
        self.register_buffer("idx_a", a, persistent=False)
        self.register_buffer("idx_b", b, persistent=False)
        self.register_buffer("idx_c", c, persistent=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        prod = x1[:, self.idx_a] * x2[:, self.idx_b] * self.cg(x1)[None, :, None]
        out = x1.new_zeros(x1.shape[0], self.n_sh, x1.shape[2])
        return out.index_add(1, self.idx_c, prod)


class SO3Convolution(nn.Module):
    """Messages ``y_i[c] = sum_j sum_ab C[a, b, c] W_{l(a)}(d_ij) Y_a(r_ij) x_j[b]`` per channel.

    The radial filter ``W`` (``[n_edges, lmax+1, F]``, one weight per filter degree and channel)
    multiplies the neighbour features, and the edge-dependent matrix
    ``M_e[c, (l1, b)] = sum_{m1} C[(l1, m1), b, c] Y_(l1, m1)(r_e)`` (no feature axis) is applied
    by one batched matrix product, so no ``[n_edges, n_couplings, F]`` tensor is formed.
    """

    def __init__(self, lmax: int):
        super().__init__()
        self.lmax = lmax
        self.cg = _Constant(torch.from_numpy(clebsch_gordan(lmax)))  # [S, S, S]
        self.register_buffer("deg", torch.from_numpy(sh_degrees(lmax)), persistent=False)

    def forward(self, x, W, Y, i, j):
        # x [n_atoms, S, F], W [E, L+1, F], Y [E, S]
        C = self.cg(x)
        S, L1 = C.shape[0], self.lmax + 1
        # M[e, c, l1, b] = sum over the m1 of degree l1 of C[a, b, c] Y[e, a]
        CY = torch.einsum("abc,ea->ecab", C, Y)  # [E, S, S(a), S(b)]
        M = x.new_zeros(Y.shape[0], S, L1, S).index_add(2, self.deg, CY)
        xj = x[j]  # [E, S, F]
        xw = (W[:, :, None, :] * xj[:, None, :, :]).reshape(Y.shape[0], L1 * S, -1)  # [E, (L+1)S, F]
        msg = torch.bmm(M.reshape(Y.shape[0], S, L1 * S), xw)  # [E, S, F]
        return torch.zeros_like(x).index_add(0, i, msg)


class SO3Net(nn.Module):
    """SO3Net representation (SchNetPack's ``SO3net``, the MoreRed paper's appendix B.5).

    Per interaction block: convolution, channel-wise CG product of the result with a linear map
    of itself, linear, gated nonlinearity (sigmoid gates from the l = 0 part, one gate per degree
    and channel), linear, residual update.

    Args:
        n_features: channels F per spherical-harmonic component.
        n_interactions: interaction blocks.
        lmax: largest degree of the features (2 in the paper).
        n_rbf: radial basis functions.
        radial: ``gaussian`` (reference) or ``sinc``.
        cutoff: cosine cutoff radius (Å); applied even on the full graph.
        max_z: largest atomic number the embedding accepts.
    Returns from ``forward``: ``(s [n_atoms, F], v [n_atoms, 3, F])`` as PaiNN.
    """

    def __init__(
        self,
        n_features: int = 128,
        n_interactions: int = 3,
        lmax: int = 2,
        n_rbf: int = 20,
        radial: str = "gaussian",
        cutoff: float = 5.0,
        max_z: int = 100,
    ):
        super().__init__()
        if lmax < 1:
            raise ValueError("SO3Net needs lmax >= 1 (the noise head reads the l = 1 features)")
        self.n_features, self.n_interactions, self.lmax, self.cutoff = n_features, n_interactions, lmax, cutoff
        F, L1 = n_features, lmax + 1
        self.embedding = nn.Embedding(max_z + 1, F)
        self.radial = RADIAL[radial](n_rbf, cutoff)
        self.filters = nn.ModuleList(nn.Linear(n_rbf, L1 * F) for _ in range(n_interactions))
        self.conv = SO3Convolution(lmax)
        self.product = SO3Coupling(lmax)
        self.mix1 = nn.ModuleList(nn.Linear(F, F, bias=False) for _ in range(n_interactions))
        self.mix2 = nn.ModuleList(nn.Linear(F, F, bias=False) for _ in range(n_interactions))
        self.mix3 = nn.ModuleList(nn.Linear(F, F, bias=False) for _ in range(n_interactions))
        self.gates = nn.ModuleList(nn.Linear(F, L1 * F) for _ in range(n_interactions))
        self.register_buffer("deg", torch.from_numpy(sh_degrees(lmax)), persistent=False)

    def forward(self, Z: torch.Tensor, positions: torch.Tensor, edges: torch.Tensor):
        i, j = edges[0], edges[1]
        r_ij = positions[j] - positions[i]
        d_ij = torch.linalg.vector_norm(r_ij, dim=-1)
        Y = real_spherical_harmonics(r_ij / d_ij.clamp_min(1e-9)[:, None], self.lmax)  # [E, S]
        rbf = self.radial(d_ij)
        fcut = cosine_cutoff(d_ij, self.cutoff)[:, None, None]
        n_atoms, S, F = Z.shape[0], (self.lmax + 1) ** 2, self.n_features
        x = positions.new_zeros(n_atoms, S, F)
        x[:, 0] = self.embedding(Z).to(positions.dtype)
        for k in range(self.n_interactions):
            W = self.filters[k](rbf).reshape(-1, self.lmax + 1, F) * fcut
            dx = self.conv(x, W, Y, i, j)
            dx = self.product(dx, self.mix1[k](dx))
            dx = self.mix2[k](dx)
            gate = torch.sigmoid(self.gates[k](dx[:, 0]).reshape(n_atoms, self.lmax + 1, F))
            dx = dx * gate[:, self.deg]
            x = x + self.mix3[k](dx)
        s = x[:, 0]
        v = x[:, [3, 1, 2]]  # (m = 1, -1, 0) = (x, y, z)
        return s, v
