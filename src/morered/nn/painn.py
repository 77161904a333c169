"""PaiNN: polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Scalar features ``s`` ``[..., F]`` and vector features ``v`` ``[..., 3, F]``; rotations act on the
axis of size 3 only, so every update below is equivariant.

Two kernels compute the same function with the same weights:

- **edge list** (:meth:`PaiNN.forward`): messages gathered along ``[2, n_edges]`` and summed into
  atoms with ``index_add``; any graph (radius graphs, given edges, molecules of any size).
- **dense** (:meth:`PaiNN.forward_dense`): all pairs inside each molecule, molecules grouped by
  size into buckets ``[B, n, n, F]``; the sum over neighbours is a plain reduction and the
  direction terms are batched matrix products.  No gather/scatter, so the backward pass is cheap
  (about half the cost of the edge-list kernel for QM9 batches on a CPU).  Molecules larger than
  ``max_dense_atoms`` take the edge-list kernel inside the same call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from morered.data.batch import full_graph
from morered.nn.blocks import RADIAL, Dense, cosine_cutoff

#: molecules up to this many atoms use the dense kernel (above: edge list; memory grows as n^2)
MAX_DENSE_ATOMS = 64
#: at most this many atom pairs (B * n^2) in one dense bucket; larger buckets are cut in chunks
MAX_DENSE_PAIRS = 1 << 16
#: molecules up to this factor larger than the smallest of a size group share its padded bucket;
#: measured on QM9 (relaxing 100 t = 100 inputs, and forward+backward on batches of 128, 1 thread):
#: 1.0 / 1.3 / 1.6 / 2.5 gave 23.2 / 18.5 / 16.9 / 12.6 structures/s and 531 / 431 / 397 / 318
#: molecules/s: the wasted pairs cost more than the fewer kernel calls save, so equal sizes only
BUCKET_RATIO = 1.0


class PaiNNInteraction(nn.Module):
    """Message block (PaiNN eq. 7-8): continuous filters from distances mix neighbour features."""

    def __init__(self, n_features: int):
        super().__init__()
        self.n = n_features
        self.phi = nn.Sequential(Dense(n_features, n_features, F.silu), Dense(n_features, 3 * n_features))

    def forward(self, s, v, W_ij, dir_ij, i, j):
        # s [n_atoms, F], v [n_atoms, 3, F], W_ij [n_edges, 3F], dir_ij [n_edges, 3]
        x = self.phi(s).index_select(0, j) * W_ij  # [n_edges, 3F]
        ds, dvv, dvs = torch.split(x, self.n, dim=-1)
        dv = dvv[:, None, :] * dir_ij[:, :, None] + dvs[:, None, :] * v.index_select(0, j)  # [n_edges, 3, F]
        s = s.index_add(0, i, ds)
        v = v.index_add(0, i, dv)
        return s, v


class PaiNNMixing(nn.Module):
    """Update block (PaiNN eq. 9-11): mixes channels within each atom (any leading dimensions)."""

    def __init__(self, n_features: int, epsilon: float = 1e-8):
        super().__init__()
        self.n = n_features
        self.mix_v = Dense(n_features, 2 * n_features, bias=False)
        self.intra = nn.Sequential(Dense(2 * n_features, n_features, F.silu), Dense(n_features, 3 * n_features))
        self.epsilon = epsilon

    def forward(self, s, v):
        vV, vW = torch.split(self.mix_v(v), self.n, dim=-1)  # [..., 3, F] each
        vV_norm = torch.sqrt((vV**2).sum(dim=-2) + self.epsilon)  # [..., F]
        x = self.intra(torch.cat([s, vV_norm], dim=-1))
        ds, dv, dsv = torch.split(x, self.n, dim=-1)
        v = v + dv.unsqueeze(-2) * vW
        s = s + ds + dsv * (vV * vW).sum(dim=-2)
        return s, v


class DensePairs(NamedTuple):
    """Pair geometry of ``B`` molecules of ``n`` atoms for the dense kernel: distances ``d``
    ``[B, n, n]`` (1 on the diagonal and padding, so no sqrt(0)), unit vectors ``dir``
    ``[B, n, n, 3]`` from atom i to atom j, and the cosine cutoff ``c`` ``[B, n, n, 1]``, zero on the
    diagonal and for padding atoms."""

    d: torch.Tensor
    dir: torch.Tensor
    c: torch.Tensor


def dense_pairs(R: torch.Tensor, cutoff: float, mask: torch.Tensor | None = None) -> DensePairs:
    """:class:`DensePairs` of positions ``R`` ``[B, n, 3]``; ``mask`` ``[B, n]`` marks real atoms."""
    n = R.shape[1]
    r = R[:, None, :, :] - R[:, :, None, :]  # [B, i, j, 3] = R_j - R_i
    off_diag = ~torch.eye(n, dtype=torch.bool, device=R.device)
    real = off_diag if mask is None else off_diag & mask[:, :, None] & mask[:, None, :]  # [B?, n, n]
    d2 = (r * r).sum(-1)
    d = torch.sqrt(torch.where(real, d2, torch.ones_like(d2)))
    return DensePairs(d, r / d[..., None], (cosine_cutoff(d, cutoff) * real.to(R.dtype))[..., None])


def dense_message(inter: PaiNNInteraction, s, v, dir, filters, first: bool = False):
    """:class:`PaiNNInteraction` on all pairs of ``B`` molecules: ``s`` [B, n, F], ``v`` [B, n, 3, F],
    ``dir`` [B, n, n, 3]; ``filters(part)`` gives the filter part 0 / 1 / 2 ``[B, i, j, F]`` (with
    the cutoff and pair mask in it).  ``first``: ``v`` is zero, the vector term is skipped.
    Returns the updated ``(s, v)``, the same function as the edge-list block on the full graph."""
    F_ = inter.n
    ps, pvv, pvs = inter.phi(s).split(F_, dim=-1)  # [B, n, F] each
    ds = (ps[:, None] * filters(0)).sum(2)  # sum over neighbours j
    dv = torch.matmul(dir.transpose(-1, -2), pvv[:, None] * filters(1))  # [B, i, 3, F]
    if not first:
        dv = dv + torch.einsum("bijf,bjcf->bicf", filters(2), pvs[:, :, None, :] * v)
    return s + ds, v + dv


def size_buckets(n_atoms: list[int], max_pairs: int = MAX_DENSE_PAIRS,
                 ratio: float = 1.0) -> list[tuple[int, list[int]]]:
    """Group molecules by size: ``[(n_max, [molecule indices]), ...]``, sizes ascending.

    A group holds molecules whose size is at most ``ratio`` times its smallest (1.0: equal sizes
    only; larger ratios give fewer, padded groups: fewer kernel calls for some wasted pairs), and
    at most ``max_pairs`` padded atom pairs (at least one molecule)."""
    order = sorted(range(len(n_atoms)), key=lambda m: n_atoms[m])
    out: list[tuple[int, list[int]]] = []
    for m in order:
        n = n_atoms[m]
        if out:
            n_max, mols = out[-1]
            if n <= ratio * n_atoms[mols[0]] and (len(mols) + 1) * max(n, n_max) ** 2 <= max_pairs:
                out[-1] = (max(n, n_max), mols + [m])
                continue
        out.append((n, [m]))
    return out


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
    Returns from ``forward`` / ``forward_dense``: ``(s [n_atoms, F], v [n_atoms, 3, F])``.
    """

    #: :class:`~morered.nn.model.DiffusionModel` may call :meth:`forward_dense` on all-pair graphs
    supports_dense = True

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
        #: molecules above this size take the edge-list kernel in :meth:`forward_dense` (not a weight)
        self.max_dense_atoms = MAX_DENSE_ATOMS
        #: size groups of :meth:`forward_dense`: molecules up to this factor larger than the
        #: smallest of a group are padded into it (fewer, larger kernel calls; not a weight)
        self.bucket_ratio = BUCKET_RATIO

    def load_shallower(self, state: dict[str, torch.Tensor], n_from: int) -> None:
        """Load the weights of a PaiNN of the same width with ``n_from`` < ``n_interactions`` blocks
        so that this deeper network computes exactly the same function (a warm start that grows).

        ``state`` is the shallower network's ``state_dict`` (keys relative to this module).  Its
        blocks become blocks ``0 .. n_from - 1``; the blocks appended after them start as identity
        maps: the last layer of their message network (``phi``) and of their update network
        (``intra``) are zero, so they add nothing until training moves them (their inputs and the
        gradients reaching those last layers are not zero, so they do train).  Their distance
        filters keep this network's fresh initialisation.
        """
        if not 0 < n_from < self.n_interactions:
            raise ValueError(f"can grow from 1 .. {self.n_interactions - 1} blocks, not {n_from}")
        own = self.state_dict()
        state = dict(state)
        if not self.shared_filters:  # the filters of all blocks are one matrix: keep the new rows
            rows = 3 * self.n_features * n_from
            for key in ("filter_net.weight", "filter_net.bias"):
                if state[key].shape[0] != rows:
                    raise ValueError(f"{key}: {tuple(state[key].shape)} is not a {n_from}-block filter")
                grown = own[key].clone()
                grown[:rows] = state[key]
                state[key] = grown
        missing, unexpected = self.load_state_dict(state, strict=False)
        new = {f"{part}.{k}." for k in range(n_from, self.n_interactions) for part in ("interactions", "mixing")}
        missing = [k for k in missing if not any(k.startswith(b) for b in new)]
        if missing or unexpected:
            raise ValueError(f"not a shallower PaiNN of this width: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for k in range(n_from, self.n_interactions):
                for last in (self.interactions[k].phi[-1], self.mixing[k].intra[-1]):
                    last.weight.zero_()
                    last.bias.zero_()

    def _filters(self, d: torch.Tensor) -> list[torch.Tensor]:
        """Distance filters of every block for distances ``d`` [...] -> list of [..., 3F]."""
        shape = d.shape
        W = self.filter_net(self.radial(d.reshape(-1))) * cosine_cutoff(d.reshape(-1), self.cutoff)[:, None]
        W = W.reshape(*shape, W.shape[-1])
        return list(W.split(3 * self.n_features, dim=-1)) if not self.shared_filters else [W] * self.n_interactions

    def forward(self, Z: torch.Tensor, positions: torch.Tensor, edges: torch.Tensor):
        """Edge-list kernel: ``edges`` ``[2, n_edges]``, atom i receives from atom j."""
        i, j = edges[0], edges[1]
        r_ij = positions.index_select(0, j) - positions.index_select(0, i)  # [n_edges, 3]
        d_ij = torch.sqrt((r_ij * r_ij).sum(-1))
        dir_ij = r_ij / d_ij.clamp_min(1e-9)[:, None]
        W = self._filters(d_ij)
        s = self.embedding(Z)
        v = torch.zeros(s.shape[0], 3, s.shape[1], dtype=s.dtype, device=s.device)
        for k, (inter, mix) in enumerate(zip(self.interactions, self.mixing)):
            s, v = inter(s, v, W[k], dir_ij, i, j)
            s, v = mix(s, v)
        return s, v

    def _dense_block(self, Z: torch.Tensor, R: torch.Tensor, mask: torch.Tensor | None = None,
                     tail=None, idx: torch.Tensor | None = None):
        """All-pair PaiNN on ``B`` molecules of ``n`` atoms: Z [B, n], R [B, n, 3]; ``mask`` [B, n]
        marks real atoms (padding neither sends nor receives messages; its outputs are garbage).

        Written for few passes over the ``[B, n, n, F]`` pair tensors: the cutoff (and the zero
        diagonal) enter the filter matmul as an extra input column,
        ``(rbf W^T + b) c = [rbf c, c] [W^T; b]``, each filter part is its own matmul (no split of
        a pair tensor, so no concatenation in the backward pass), the direction term is a batched
        matrix product over neighbours, and the vector term contracts the filter with per-atom
        features (:func:`dense_message`).  ``tail(s, v, pairs, idx)`` (see :meth:`forward_dense`)
        runs last, on the same pair geometry.
        """
        B, n = Z.shape
        F_ = self.n_features
        pairs = dense_pairs(R, self.cutoff, mask)
        rbf_c = torch.cat([self.radial(pairs.d.reshape(-1)).view(B, n, n, -1) * pairs.c, pairs.c], -1)  # [B, n, n, K+1]
        Wb = torch.cat([self.filter_net.weight.T, self.filter_net.bias[None]], 0)  # [K+1, 3F x blocks]
        s = self.embedding(Z)  # [B, n, F]
        v = torch.zeros(B, n, 3, F_, dtype=s.dtype, device=s.device)
        for k, (inter, mix) in enumerate(zip(self.interactions, self.mixing)):
            base = 0 if self.shared_filters else 3 * F_ * k

            def filters(part: int, base=base) -> torch.Tensor:  # [B, i, j, F]
                return rbf_c @ Wb[:, base + part * F_: base + (part + 1) * F_]

            s, v = mix(*dense_message(inter, s, v, pairs.dir, filters, first=k == 0))
        if tail is not None:
            s, v = tail(s, v, pairs, idx)
        return s, v

    def forward_dense(self, Z: torch.Tensor, positions: torch.Tensor, n_atoms: torch.Tensor, tail=None):
        """All pairs inside each molecule (the full graph) without an edge list.

        Args:
            Z: ``[n_atoms]``; positions: ``[n_atoms, 3]``, the atoms of each molecule contiguous.
            n_atoms: atoms per molecule ``[n_mol]``.
            Molecules larger than ``self.max_dense_atoms`` take the edge-list kernel.
            tail: optional ``tail(s, v, pairs, idx) -> (s, v)`` applied to every size group after
                the blocks, on its pair geometry (:class:`DensePairs`); ``idx`` ``[B, n]`` are the
                input rows of the group's atoms (``n_atoms.sum()`` marks padding).  With a tail
                every molecule must fit the dense kernel (a ``ValueError`` otherwise): a caller
                with larger molecules uses the edge list for its own layers too.
        Returns: ``(s [n_atoms, F], v [n_atoms, 3, F])`` in the input's atom order.
        """
        device = positions.device
        sizes = n_atoms.tolist()
        # molecules grouped by size (padded up to the largest in a group when bucket_ratio > 1);
        # the outputs of every group are gathered in group order, and one index_select restores the
        # input order at the end
        n_cpu = n_atoms.cpu()
        first = torch.cumsum(n_cpu, 0) - n_cpu
        N = positions.shape[0]
        Z_ext = torch.cat([Z, Z.new_zeros(1)])  # row N: the padding atom
        R_ext = torch.cat([positions, positions.new_zeros(1, 3)])
        small = [n if n <= self.max_dense_atoms else 0 for n in sizes]
        s_parts, v_parts, where = [], [], []
        for n, mols in size_buckets(small, ratio=self.bucket_ratio):
            if n == 0:
                continue
            mols_t = torch.tensor(mols, dtype=torch.long)
            ar = torch.arange(n)
            real = ar[None, :] < n_cpu[mols_t][:, None]  # [B, n]
            idx = torch.where(real, first[mols_t][:, None] + ar[None, :], torch.full_like(real, N, dtype=torch.long))
            idx, real = idx.to(device), real.to(device)
            s, v = self._dense_block(Z_ext[idx], R_ext[idx], None if bool(real.all()) else real, tail, idx)
            s_parts.append(s[real])
            v_parts.append(v[real])
            where.append(idx[real])
        large = [m for m, n in enumerate(sizes) if n > self.max_dense_atoms]
        if large and tail is not None:
            raise ValueError(f"a dense tail needs molecules of at most {self.max_dense_atoms} atoms, "
                             f"not {max(sizes)}")
        if large:
            lt = torch.tensor(large, dtype=torch.long)
            n_l = n_cpu[lt]
            idx = (torch.repeat_interleave(first[lt] - (torch.cumsum(n_l, 0) - n_l), n_l)
                   + torch.arange(int(n_l.sum()))).to(device)
            idx_m = torch.repeat_interleave(torch.arange(len(large), device=device), n_l.to(device))
            s, v = self.forward(Z.index_select(0, idx), positions.index_select(0, idx), full_graph(idx_m))
            s_parts.append(s)
            v_parts.append(v)
            where.append(idx)
        perm = torch.cat(where)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm), device=device)
        return (torch.cat(s_parts).index_select(0, inverse), torch.cat(v_parts).index_select(0, inverse))
