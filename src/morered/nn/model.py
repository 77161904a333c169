"""The MoreRed network: a representation with a noise head, a time head, or both (JT).

Every model here and every pair of models (:class:`NoiseAndTime`) answers the same call,
which is all that the samplers rely on::

    out = model(batch, t_norm=None)
    out[P.t_pred]   # [n_mol] predicted t/T (if the model has a time head)
    out[P.eps_pred] # [n_atoms, 3] predicted noise (if it has a noise head), conditioned on
                    # ``t_norm`` if given, else (and where t_norm is NaN) on its own time
                    # prediction (clamped to [0, 1])
"""

from __future__ import annotations

import torch
from torch import nn

from morered import properties as P
from morered.data.batch import batch_edges
from morered.nn.heads import NoiseHead, TimeHead
from morered.nn.painn import PaiNN
from morered.nn.so3net import SO3Net

REPRESENTATIONS = {"painn": PaiNN, "so3net": SO3Net}


def _fill_time(t_norm: torch.Tensor | None, t_pred: torch.Tensor | None) -> torch.Tensor:
    """The step each molecule's noise prediction is conditioned on: ``t_norm`` where given, the
    model's own (detached, clamped) prediction where ``t_norm`` is None or NaN."""
    if t_norm is not None and not bool(torch.isnan(t_norm).any()):
        return t_norm
    if t_pred is None:
        raise ValueError("a noise-only model needs t_norm")
    own = t_pred.detach().clamp(0.0, 1.0)
    return own if t_norm is None else torch.where(torch.isnan(t_norm), own.to(t_norm.dtype), t_norm)


class KernelChoice:
    """The ``kernel`` attribute of a model: ``auto``, ``dense`` or ``edges`` (checked on assignment)."""

    def __set_name__(self, owner, name):
        self.attr = "_" + name

    def __get__(self, obj, objtype=None):
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj, value: str) -> None:
        if value not in ("auto", "dense", "edges"):
            raise ValueError(f"kernel must be 'auto', 'dense' or 'edges', not {value!r}")
        object.__setattr__(obj, self.attr, value)


def use_dense_kernel(model, batch) -> bool:
    """Whether ``model.representation`` may take its dense (all pairs in each molecule) kernel for
    ``batch``: not with given edges, ``kernel="edges"`` or a representation without one; with
    ``kernel="auto"`` only where it computes the same function (the full graph, or a radius graph
    at least as wide as the representation's cutoff)."""
    if P.edges in batch or model.kernel == "edges" or not getattr(model.representation, "supports_dense", False):
        return False
    if model.kernel == "dense":
        return True
    return model.graph == "full" or model.graph_cutoff >= model.representation.cutoff


class DiffusionModel(nn.Module):
    """Representation + optional noise head + optional time head.

    Args:
        representation: ``{"name": "painn", **PaiNN kwargs}``.
        noise_head: build the noise head eps_theta.
        time_head: build the time-step head t_phi.
        head_layers: layers of each head.
        graph: ``"full"`` (all pairs inside each molecule, the reference) or ``"radius"``.
        graph_cutoff: radius (Å) for the radius graph; defaults to the representation cutoff.
        kernel: ``"auto"`` (the representation's dense kernel where it gives the same result: all
            pairs, or a radius graph no shorter than the representation's cutoff, whose filters are
            zero beyond it; the edge list otherwise), ``"dense"`` or ``"edges"``.  Not a weight:
            the same weights give the same outputs with either kernel.
    """

    def __init__(
        self,
        representation: dict | None = None,
        noise_head: bool = True,
        time_head: bool = True,
        head_layers: int = 3,
        graph: str = "full",
        graph_cutoff: float | None = None,
        kernel: str = "auto",
    ):
        super().__init__()
        rep = dict(representation or {})
        name = rep.pop("name", "painn")
        self.representation = REPRESENTATIONS[name](**rep)
        n = self.representation.n_features
        self.noise_head = NoiseHead(n, head_layers) if noise_head else None
        self.time_head = TimeHead(n, head_layers) if time_head else None
        if graph not in ("full", "radius"):
            raise ValueError(f"graph must be 'full' or 'radius', not {graph!r}")
        self.graph = graph
        self.graph_cutoff = graph_cutoff if graph_cutoff is not None else self.representation.cutoff
        self.kernel = kernel

    kernel = KernelChoice()

    def use_dense(self, batch) -> bool:
        """Whether :meth:`represent` takes the dense kernel for this batch."""
        return use_dense_kernel(self, batch)

    def represent(self, batch: dict):
        """``(s [n_atoms, F], v [n_atoms, 3, F])`` of the representation, by the chosen kernel."""
        R = batch[P.R].to(next(self.parameters()).dtype)
        if self.use_dense(batch):
            return self.representation.forward_dense(batch[P.Z], R, batch[P.n_atoms])
        return self.representation(batch[P.Z], R, self.edges(batch))

    def edges(self, batch):
        return batch_edges(batch, self.graph, self.graph_cutoff)

    def predict_time(self, batch: dict) -> torch.Tensor:
        """Predicted t/T per molecule ``[n_mol]`` (time head only, no noise head)."""
        if self.time_head is None:
            raise ValueError("this model has no time head")
        s, _ = self.represent(batch)
        return self.time_head(s, batch[P.idx_m], len(batch[P.n_atoms]))[1]

    def forward(self, batch: dict, t_norm: torch.Tensor | None = None) -> dict:
        idx_m = batch[P.idx_m]
        n_mol = len(batch[P.n_atoms])
        s, v = self.represent(batch)
        out = {}
        if self.time_head is not None:
            out[P.t_pred_atom], out[P.t_pred] = self.time_head(s, idx_m, n_mol)
        if self.noise_head is not None:
            t_norm = _fill_time(t_norm, out.get(P.t_pred))
            out[P.eps_pred] = self.noise_head(s, v, t_norm.to(s.dtype)[idx_m], idx_m)
        return out


class NoiseAndTime(nn.Module):
    """A separate time predictor and noise model answering as one model (MoreRed-AS / -ITP)."""

    def __init__(self, noise_model: nn.Module, time_model: nn.Module):
        super().__init__()
        self.noise_model, self.time_model = noise_model, time_model

    def predict_time(self, batch: dict) -> torch.Tensor:
        return self.time_model.predict_time(batch)

    def forward(self, batch: dict, t_norm: torch.Tensor | None = None) -> dict:
        out = {}
        if t_norm is None or bool(torch.isnan(t_norm).any()):
            out.update(self.time_model(batch))
        t_norm = _fill_time(t_norm, out.get(P.t_pred))
        out[P.eps_pred] = self.noise_model(batch, t_norm)[P.eps_pred]
        return out


def build_model(model_args: dict) -> DiffusionModel:
    """Rebuild a model from the plain-data arguments stored in a checkpoint."""
    return DiffusionModel(**model_args)
