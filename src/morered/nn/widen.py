"""Function-preserving widening: load a trained network into a copy with more features per layer.

A warm start that grows in width (``morered train --init-from FILE --set
model.representation.n_features=N`` with N larger than the file's): every weight of the narrow
network is copied into the matching block of the wide one, and the weights that would carry the
*new* channels into the *old* ones are zero.  The old channels therefore compute exactly what they
computed before, down to the outputs (which read old channels only), while the new channels start
from their fresh initialisation: they carry values from step 0, so the zero weights reading them
get gradients and training brings them in (Net2Net's "zero outgoing weights", Chen et al. 2016).

The layers mix channels only through dense layers; every other operation (filters times messages,
vector norms, gates, scalar products over the spatial axis) acts channel by channel.  What this
module has to know is where the channels of each dense layer sit: a layer whose output is split
(PaiNN's ``3F`` messages, a gated block's ``[scalars, gates]``) or whose input is a concatenation
(``[s, |Vv|]``, ``[s, t/T]``) is laid out in *chunks*, and each chunk grows at its own end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from morered.nn.blocks import Dense
from morered.nn.heads import GatedEquivariantBlock, NoiseHead, TimeHead
from morered.nn.painn import PaiNN, PaiNNInteraction, PaiNNMixing


@dataclass(frozen=True)
class Layout:
    """Channel chunks of each dimension of one parameter; ``linear``: dim 1 is the input of a
    dense layer (its new-input columns in old-output rows must be zero)."""

    dims: tuple[tuple[int, ...], ...]
    linear: bool = False


def dense_layout(out: dict, prefix: str, layer: nn.Linear, out_chunks, in_chunks) -> None:
    """Record the layout of dense layer ``layer`` (parameters ``prefix + weight / bias``)."""
    out_chunks, in_chunks = tuple(int(c) for c in out_chunks), tuple(int(c) for c in in_chunks)
    if sum(out_chunks) != layer.out_features or sum(in_chunks) != layer.in_features:
        raise ValueError(f"{prefix}: layout {out_chunks} x {in_chunks} does not fit "
                         f"{layer.out_features} x {layer.in_features}")
    out[prefix + "weight"] = Layout((out_chunks, in_chunks), linear=True)
    if layer.bias is not None:
        out[prefix + "bias"] = Layout((out_chunks,))


def gated_layout(out: dict, p: str, b: GatedEquivariantBlock, s_chunks) -> None:
    """A gated equivariant block whose scalar input is laid out in ``s_chunks``."""
    n_vin, n_hidden = b.mix_vectors.in_features, b.scalar_net[0].out_features
    dense_layout(out, p + "mix_vectors.", b.mix_vectors, [b.n_vout] * 2, [n_vin])
    dense_layout(out, p + "scalar_net.0.", b.scalar_net[0], [n_hidden], list(s_chunks) + [b.n_vout])
    dense_layout(out, p + "scalar_net.1.", b.scalar_net[1], [b.n_sout, b.n_vout], [n_hidden])


def mlp_layout(out: dict, p: str, seq: nn.Sequential) -> None:
    """A stack of dense layers without split outputs or concatenated inputs."""
    for k, layer in enumerate(seq):
        dense_layout(out, f"{p}{k}.", layer, [layer.out_features], [layer.in_features])


def layouts(model: nn.Module) -> dict[str, Layout]:
    """The channel layout of every width-dependent parameter of ``model``.  The backbone and the
    diffusion heads are described here; any other module describes its own dense layers with a
    method ``channel_layouts(out, prefix)`` (the force field's, in :mod:`morered.forcefield.model`)."""
    out: dict[str, Layout] = {}
    for name, m in model.named_modules():
        p = name + "." if name else ""
        if isinstance(m, PaiNN):
            F = m.n_features
            out[p + "embedding.weight"] = Layout(((m.embedding.num_embeddings,), (F,)))
            blocks = 1 if m.shared_filters else m.n_interactions
            dense_layout(out, p + "filter_net.", m.filter_net, [F] * 3 * blocks, [m.filter_net.in_features])
        elif isinstance(m, PaiNNInteraction):
            dense_layout(out, p + "phi.0.", m.phi[0], [m.n], [m.n])
            dense_layout(out, p + "phi.1.", m.phi[1], [m.n] * 3, [m.n])
        elif isinstance(m, PaiNNMixing):
            dense_layout(out, p + "mix_v.", m.mix_v, [m.n] * 2, [m.n])
            dense_layout(out, p + "intra.0.", m.intra[0], [m.n], [m.n, m.n])  # input [s, |Vv|]
            dense_layout(out, p + "intra.1.", m.intra[1], [m.n] * 3, [m.n])
        elif isinstance(m, NoiseHead):
            for k, b in enumerate(m.blocks):  # block 0 reads [s, t/T]
                s_in = b.scalar_net[0].in_features - b.n_vout
                gated_layout(out, f"{p}blocks.{k}.", b, [s_in - 1, 1] if k == 0 else [s_in])
        elif isinstance(m, TimeHead):
            mlp_layout(out, p + "net.", m.net)
        elif hasattr(m, "channel_layouts"):
            m.channel_layouts(out, p)
    return out


def _old_positions(old: tuple[int, ...], new: tuple[int, ...]) -> np.ndarray:
    """Indices in the wide dimension where the narrow dimension's entries go (chunk by chunk)."""
    if len(old) != len(new) or any(a > b for a, b in zip(old, new)):
        raise ValueError(f"chunks {old} cannot grow into {new}")
    starts = np.cumsum((0,) + tuple(new))[:-1]
    return np.concatenate([s + np.arange(a) for s, a in zip(starts, old)]).astype(np.int64)


@torch.no_grad()
def load_narrower(model: nn.Module, state: dict[str, torch.Tensor], narrow: nn.Module) -> None:
    """Load ``state`` (the ``state_dict`` of ``narrow``, the same architecture with fewer features)
    into ``model`` so that ``model`` computes the same outputs.  Entries of ``model`` that
    ``state`` lacks (a head the file has not) keep their fresh initialisation.

    Raises:
        ValueError: a parameter whose shape differs and whose layout is unknown, or a narrow
            layout that does not fit into the wide one.
    """
    wide_l, narrow_l = layouts(model), layouts(narrow)
    own = model.state_dict()
    merged = {}
    for key, target in own.items():
        if key not in state:
            continue
        src = state[key]
        if key not in wide_l:
            if tuple(src.shape) != tuple(target.shape):
                raise ValueError(f"{key}: {tuple(src.shape)} -> {tuple(target.shape)}, no known channel layout")
            merged[key] = src
            continue
        lw, ln = wide_l[key], narrow_l[key]
        pos = [_old_positions(a, b) for a, b in zip(ln.dims, lw.dims)]
        if tuple(len(p) for p in pos) != tuple(src.shape):
            raise ValueError(f"{key}: {tuple(src.shape)} does not match its layout {ln.dims}")
        t = target.detach().clone()
        t[np.ix_(*pos)] = src.to(t.dtype)
        if lw.linear:  # old outputs must not read new inputs
            new_in = np.setdiff1d(np.arange(t.shape[1]), pos[1])
            if len(new_in):
                t[np.ix_(pos[0], new_in)] = 0
        merged[key] = t
    model.load_state_dict(merged, strict=False)


def check_widening(model: nn.Module) -> None:
    """Raise ValueError when ``model`` has a dense layer whose layout :func:`layouts` does not
    know (a layer added later must be described here before a widening warm start may use it)."""
    known = layouts(model)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, Dense)) and name + ".weight" not in known:
            raise ValueError(f"no channel layout for the dense layer {name!r}: cannot widen this network")
