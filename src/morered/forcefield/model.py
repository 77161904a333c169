"""A PaiNN energy model: energies, forces as their negative gradient, optional DeNS heads.

The energy is a sum of atomic terms ``scale * mlp(s_i) + offset[Z_i]``; the per-element offsets
``offset`` (eV) are fitted by least squares on the training energies (:func:`fit_element_energies`)
and ``scale`` (eV) is the RMS of the training force components times 1 Å, so that the network
learns numbers of order one.  Forces are ``-dE/dx`` (energy conserving); in training the graph is
kept (``create_graph``) so that the force loss trains the weights.

DeNS (SPEC §11) needs the original forces of corrupted atoms as an *equivariant input*.  The
PaiNN representation is called as a black box, ``representation(Z, positions, edges)``, so the
force input enters right after it and is spread to the neighbours by one more PaiNN block
(interaction + mixing) that every model here has, with or without DeNS (same architecture, same
parameter count; without a force input the block is just one more layer):

- vectors: ``v_i += f_i ⊗ g(s_i, |f_i|)`` with ``f_i`` the force ``F_i/scale`` bounded smoothly
  in magnitude (:class:`ForceInput`), a copy of the force per channel gated by a
  learned function of invariants (a scalar times a vector: equivariant);
- scalars: ``s_i += mlp(|f_i|)`` (invariant), zero where ``F_i = 0``.

A separate equivariant head (gated equivariant blocks) predicts ``eps/sigma`` per atom.  At
inference the force input is zero and the head is unused.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from morered import properties as P
from morered.data.batch import batch_edges
from morered.nn.blocks import RADIAL, Dense, cosine_cutoff, mlp
from morered.nn.heads import GatedEquivariantBlock
from morered.nn.model import KernelChoice, use_dense_kernel
from morered.nn.painn import PaiNN, PaiNNInteraction, PaiNNMixing, dense_message
from morered.nn.widen import dense_layout, gated_layout, mlp_layout

REPRESENTATIONS = {"painn": PaiNN}


class ForceInput(nn.Module):
    """Adds a force field ``[n_atoms, 3]`` (zero = none) to PaiNN features ``(s, v)`` equivariantly.

    The force (in units of the model's ``scale``) is first bounded smoothly,
    ``f -> f * bound / (bound + |f|)``: the direction is kept, the magnitude is monotone and below
    ``bound``.  Labels of strongly distorted structures carry forces hundreds of times their typical
    size (GFN2-xTB: up to 5,000 eV/Å where two atoms nearly touch); fed linearly they gave losses
    of 1e12 and skipped batches.  A scalar function of ``|f|`` times ``f``: still equivariant.
    """

    def __init__(self, n_features: int, bound: float = 4.0):
        super().__init__()
        self.bound = float(bound)
        self.scalar = nn.Sequential(Dense(1, n_features, F.silu), Dense(n_features, n_features))
        self.gate = nn.Sequential(Dense(n_features + 1, n_features, F.silu), Dense(n_features, n_features))

    def forward(self, s, v, force):
        """``s`` [..., F], ``v`` [..., 3, F], ``force`` [..., 3] (any leading dimensions)."""
        norm = torch.linalg.vector_norm(force, dim=-1, keepdim=True)  # [n, 1], invariant
        squash = self.bound / (self.bound + norm)
        force, norm = force * squash, norm * squash
        has = (norm > 0).to(s.dtype)  # atoms without force input keep their features exactly
        s_new = s + has * self.scalar(norm)
        g = self.gate(torch.cat([s, norm], dim=-1)) * has  # [n, F]
        v_new = v + force[..., :, None] * g[..., None, :]
        return s_new, v_new

    def channel_layouts(self, out: dict, p: str) -> None:
        """Where the channels of the dense layers sit (:mod:`morered.nn.widen`)."""
        F_ = self.scalar[1].out_features
        dense_layout(out, p + "scalar.0.", self.scalar[0], [F_], [1])
        dense_layout(out, p + "scalar.1.", self.scalar[1], [F_], [F_])
        dense_layout(out, p + "gate.0.", self.gate[0], [F_], [F_, 1])  # input [s, |f|]
        dense_layout(out, p + "gate.1.", self.gate[1], [F_], [F_])


class NoisePredictionHead(nn.Module):
    """Equivariant per-atom 3-vector (eps/sigma) from ``(s, v)``; not re-centred."""

    def __init__(self, n_features: int, n_layers: int = 2):
        super().__init__()
        widths = [n_features] + [max(1, n_features // 2**k) for k in range(1, n_layers)] + [1]
        self.blocks = nn.ModuleList(
            GatedEquivariantBlock(widths[k], widths[k], widths[k + 1], widths[k + 1], widths[k],
                                  sactivation=None if k == n_layers - 1 else F.silu)
            for k in range(n_layers)
        )

    def forward(self, s, v):
        for b in self.blocks:
            s, v = b(s, v)
        return v[..., 0]

    def channel_layouts(self, out: dict, p: str) -> None:
        """Where the channels of the dense layers sit (:mod:`morered.nn.widen`)."""
        for k, b in enumerate(self.blocks):
            gated_layout(out, f"{p}blocks.{k}.", b, [b.scalar_net[0].in_features - b.n_vout])


class ForceField(nn.Module):
    """PaiNN energy model with forces by autograd and an optional DeNS noise head.

    Args:
        representation: ``{"name": "painn", **PaiNN kwargs}``.
        head_layers: layers of the atom-wise energy MLP.
        dens: build the force input's noise head (the force-input block exists either way).
        graph: ``full`` or ``radius`` (``graph_cutoff`` Å, default the representation cutoff).
        max_z: largest atomic number (size of the offset table).
        kernel: the representation's kernel, as :class:`morered.nn.model.DiffusionModel`'s:
            ``auto`` (dense on all-pair graphs, same function: on QM9 batches of 32, 1 thread, a
            training step 1.2-1.4x and energy+forces 1.2x faster with the README's malloc settings,
            2-2.5x without them), ``dense`` or ``edges``. Not a weight: model files do not store it.
    """

    kernel = KernelChoice()

    def __init__(self, representation: dict | None = None, head_layers: int = 2, dens: bool = False,
                 graph: str = "full", graph_cutoff: float | None = None, max_z: int = 100, kernel: str = "auto"):
        super().__init__()
        rep = dict(representation or {})
        name = rep.pop("name", "painn")
        self.representation = REPRESENTATIONS[name](**rep)
        n = self.representation.n_features
        cutoff = self.representation.cutoff
        self.force_input = ForceInput(n)
        n_rbf = int(rep.get("n_rbf", 20))
        self.radial = RADIAL[rep.get("radial", "gaussian")](n_rbf, cutoff)
        self.filter_net = Dense(n_rbf, 3 * n)
        self.interaction = PaiNNInteraction(n)
        self.mixing = PaiNNMixing(n)
        self.energy_head = mlp(n, 1, head_layers)
        self.noise_head = NoisePredictionHead(n) if dens else None
        if graph not in ("full", "radius"):
            raise ValueError(f"graph must be 'full' or 'radius', not {graph!r}")
        self.graph = graph
        self.graph_cutoff = graph_cutoff if graph_cutoff is not None else cutoff
        self.cutoff = cutoff
        self.kernel = kernel
        self.register_buffer("element_energy", torch.zeros(max_z + 1, dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))

    def edges(self, batch):
        return batch_edges(batch, self.graph, self.graph_cutoff)

    def channel_layouts(self, out: dict, p: str) -> None:
        """The layers outside the representation and the heads (:mod:`morered.nn.widen`)."""
        F_ = self.representation.n_features
        dense_layout(out, p + "filter_net.", self.filter_net, [F_] * 3, [self.filter_net.in_features])
        mlp_layout(out, p + "energy_head.", self.energy_head)

    def features(self, Z, R, edges, force_input=None, n_atoms=None):
        """Atom features after the representation, the force input and the last message block;
        ``n_atoms`` (atoms per molecule, on an all-pair graph) takes the dense kernel for all of
        them (:meth:`_dense_tail`; ``edges`` may then be None), unless a molecule is too large for
        it: then the last block takes the edge list."""
        if force_input is not None:
            force_input = force_input.to(R.dtype) / self.scale.to(R.dtype)
        if n_atoms is not None and int(n_atoms.max()) <= self.representation.max_dense_atoms:
            return self.representation.forward_dense(Z, R, n_atoms, tail=self._dense_tail(force_input))
        if n_atoms is not None:
            s, v = self.representation.forward_dense(Z, R, n_atoms)
        else:
            s, v = self.representation(Z, R, edges)
        if force_input is not None:
            s, v = self.force_input(s, v, force_input)
        i, j = edges[0], edges[1]
        r_ij = R[j] - R[i]
        d_ij = torch.linalg.vector_norm(r_ij, dim=-1)
        W = self.filter_net(self.radial(d_ij)) * cosine_cutoff(d_ij, self.cutoff)[:, None]
        s, v = self.interaction(s, v, W, r_ij / d_ij.clamp_min(1e-9)[:, None], i, j)
        return self.mixing(s, v)

    def _dense_tail(self, force_input):
        """The force input and the last message block on the representation's size groups
        (:meth:`PaiNN.forward_dense`): the same function as the edge-list path of :meth:`features`,
        without gathering and scattering along edges (a training step ~15 % faster)."""
        if force_input is not None:
            force_ext = torch.cat([force_input, force_input.new_zeros(1, 3)])  # row N: padding, no force

        def tail(s, v, pairs, idx):
            if force_input is not None:
                s, v = self.force_input(s, v, force_ext[idx])
            B, n = idx.shape
            rbf_c = torch.cat([self.radial(pairs.d.reshape(-1)).view(B, n, n, -1) * pairs.c, pairs.c], -1)
            Wb = torch.cat([self.filter_net.weight.T, self.filter_net.bias[None]], 0)  # [K+1, 3F]
            F_ = self.representation.n_features

            def filters(part: int) -> torch.Tensor:
                return rbf_c @ Wb[:, part * F_:(part + 1) * F_]

            return self.mixing(*dense_message(self.interaction, s, v, pairs.dir, filters))

        return tail

    def forward(self, batch: dict, forces: bool = True, create_graph: bool = False,
                force_input: torch.Tensor | None = None) -> dict:
        """``{P.energy: [n_mol] eV, P.forces: [n_atoms, 3] eV/Å, P.noise_pred: [n_atoms, 3]}``
        (forces if ``forces``; the noise prediction if the model has a DeNS head and a
        ``force_input`` is given)."""
        dtype = next(self.parameters()).dtype
        R = batch[P.R].to(dtype)
        if forces and not R.requires_grad:
            R = R.detach().requires_grad_(True)
        Z, idx_m = batch[P.Z], batch[P.idx_m]
        dense = use_dense_kernel(self, batch)
        fits = dense and int(batch[P.n_atoms].max()) <= self.representation.max_dense_atoms
        s, v = self.features(Z, R, None if fits else self.edges({**batch, P.R: R}), force_input,
                             batch[P.n_atoms] if dense else None)
        e_atom = self.energy_head(s)[:, 0] * self.scale.to(dtype) + self.element_energy[Z].to(dtype)
        n_mol = len(batch[P.n_atoms])
        energy = torch.zeros(n_mol, dtype=dtype, device=R.device).index_add(0, idx_m, e_atom)
        out = {P.energy: energy}
        if forces:
            (g,) = torch.autograd.grad(energy.sum(), R, create_graph=create_graph)
            out[P.forces] = -g
        if self.noise_head is not None and force_input is not None:
            out[P.noise_pred] = self.noise_head(s, v)
        return out


def fit_element_energies(numbers, offsets, energies, max_z: int = 100) -> np.ndarray:
    """Per-element energies (eV) from least squares ``E_k ≈ sum_i e[Z_i]`` over the training set."""
    numbers, offsets = np.asarray(numbers), np.asarray(offsets)
    elements = np.unique(numbers)
    counts = np.zeros((len(offsets) - 1, len(elements)))
    col = np.searchsorted(elements, numbers)
    mol = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    np.add.at(counts, (mol, col), 1.0)
    coef, *_ = np.linalg.lstsq(counts, np.asarray(energies, np.float64), rcond=None)
    table = np.zeros(max_z + 1)
    table[elements] = coef
    return table


def build_forcefield(model_args: dict) -> ForceField:
    """Rebuild a force field from the plain-data arguments stored in a model file."""
    return ForceField(**model_args)


def load_forcefield(path_or_dict, device="cpu") -> ForceField:
    """A force field from a model file written by ``morered train --model forcefield`` (EMA weights)."""
    d = path_or_dict if isinstance(path_or_dict, dict) else torch.load(path_or_dict, map_location="cpu",
                                                                       weights_only=True)
    if d.get("model_type") != "forcefield":
        raise ValueError(f"not a force-field model file (model_type {d.get('model_type')!r})")
    m = build_forcefield(d["model_args"])
    m.load_state_dict(d["state_dict"])
    return m.to(device).eval()
