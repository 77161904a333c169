"""Batches of molecules: concatenated atoms with a molecule index, centring, and graphs."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from morered import properties as P


def scatter_mean(x: torch.Tensor, idx_m: torch.Tensor, n_mol: int | None = None) -> torch.Tensor:
    """Mean of ``x`` ``[n_atoms, ...]`` over the atoms of each molecule -> ``[n_mol, ...]``."""
    n_mol = int(idx_m.max()) + 1 if n_mol is None else n_mol
    out = torch.zeros((n_mol,) + x.shape[1:], dtype=x.dtype, device=x.device)
    out.index_add_(0, idx_m, x)
    count = torch.zeros(n_mol, dtype=x.dtype, device=x.device).index_add_(
        0, idx_m, torch.ones_like(idx_m, dtype=x.dtype)
    )
    return out / count.clamp_min(1).view((-1,) + (1,) * (x.dim() - 1))


def centre(x: torch.Tensor, idx_m: torch.Tensor) -> torch.Tensor:
    """Subtract each molecule's centre of geometry from positions ``[n_atoms, 3]``."""
    return x - scatter_mean(x, idx_m)[idx_m]


def centred_noise(shape, idx_m, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise ``[n_atoms, 3]`` projected to zero mean per molecule.

    Drawn on the CPU from ``generator`` (so that a seed gives the same numbers on every device),
    then moved to ``device``.
    """
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    return centre(z, idx_m.cpu()).to(device=device, dtype=dtype)


def full_graph(idx_m: torch.Tensor) -> torch.Tensor:
    """All ordered pairs (i, j), i != j, inside each molecule: ``[2, n_edges]``.

    ``idx_m`` must be sorted (atoms of a molecule contiguous), as every batch here is.
    """
    device = idx_m.device
    n = torch.bincount(idx_m)  # atoms per molecule [n_mol]
    n = n[n > 0]
    start = torch.cumsum(n, 0) - n
    # for every atom i: its molecule's size and start offset
    n_i = torch.repeat_interleave(n, n)
    s_i = torch.repeat_interleave(start, n)
    i = torch.repeat_interleave(torch.arange(idx_m.numel(), device=device), n_i)
    # j runs over the molecule of i: offset within molecule for each edge
    offs = torch.arange(i.numel(), device=device) - torch.repeat_interleave(
        torch.cumsum(n_i, 0) - n_i, n_i
    )
    j = torch.repeat_interleave(s_i, n_i) + offs
    keep = i != j
    return torch.stack([i[keep], j[keep]])


def radius_graph(positions: torch.Tensor, idx_m: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Pairs inside each molecule closer than ``cutoff`` (Å): ``[2, n_edges]``.

    Computed from the full graph; memory grows with the sum of squared molecule sizes, which is
    fine up to a few thousand atoms per molecule.
    """
    e = full_graph(idx_m)
    d = (positions[e[1]] - positions[e[0]]).norm(dim=-1)
    return e[:, d < cutoff]


def batch_edges(batch: dict, graph: str, cutoff: float) -> torch.Tensor:
    """The batch's own ``P.edges`` if present, else all pairs (``graph="full"``) or the pairs closer
    than ``cutoff`` (``graph="radius"``) inside each molecule."""
    if P.edges in batch:
        return batch[P.edges]
    if graph == "radius":
        return radius_graph(batch[P.R], batch[P.idx_m], cutoff)
    return full_graph(batch[P.idx_m])


def collate(
    positions: Sequence[np.ndarray], numbers: Sequence[np.ndarray], ids: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Build a batch from per-molecule arrays; positions are centred, float32."""
    n = torch.tensor([len(z) for z in numbers], dtype=torch.long)
    idx_m = torch.repeat_interleave(torch.arange(len(n)), n)
    R = torch.as_tensor(np.concatenate(positions), dtype=torch.float32)
    batch = {
        P.R: centre(R, idx_m),
        P.Z: torch.as_tensor(np.concatenate(numbers), dtype=torch.long),
        P.idx_m: idx_m,
        P.n_atoms: n,
    }
    if ids is not None:
        batch[P.mol_id] = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    return batch


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
