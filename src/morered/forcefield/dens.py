"""Force-field losses, plain and with DeNS (denoising non-equilibrium structures, SPEC §8, §11).

Plain: ``w_E * mean_mol |E - E_ref| / scale + w_F * mean_atoms ||F - F_ref|| / scale`` (the
released MD17 recipe's L1 energy and per-atom L2 force norm, on targets divided by the model's
``scale``).

DeNS: each structure is corrupted with probability ``p``; inside a corrupted structure each atom
with probability ``fraction`` is displaced by ``eps ~ N(0, sigma² I)``.  The corrupted atoms get
their *original* forces as an equivariant input, and a separate head predicts ``eps/sigma`` for
them: loss ``mean over corrupted atoms of ||pred - eps/sigma||`` (not squared).  The other atoms
of a corrupted structure keep their force targets (the forces at the displaced geometry are
compared with the original ones, as in the released code), and the energy loss covers every
structure with the original energy.  With nothing corrupted the DeNS loss *is* the plain loss.
"""

from __future__ import annotations

import torch

from morered import properties as P

DENS_DEFAULTS = {"p": 0.25, "sigma": 0.05, "fraction": 0.25}
WEIGHT_DEFAULTS = {"energy": 1.0, "forces": 80.0, "denoising": 5.0}


def corrupt(batch: dict, p: float, sigma: float, fraction: float, generator=None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Corrupt a batch for DeNS.

    Returns:
        ``(noisy batch with P.force_input, atom mask [n_atoms] bool, eps [n_atoms, 3])``; ``eps``
        is exactly what was added to the positions (zero for untouched atoms), the force input
        is the original force on corrupted atoms and zero elsewhere.
    """
    R, idx_m = batch[P.R], batch[P.idx_m]
    n_mol = len(batch[P.n_atoms])
    struct = torch.rand(n_mol, generator=generator) < p
    atom = (torch.rand(len(idx_m), generator=generator) < fraction) & struct.to(idx_m.device)[idx_m].cpu()
    eps = torch.randn(R.shape, generator=generator, dtype=torch.float32) * sigma
    atom = atom.to(R.device)
    eps = eps.to(device=R.device, dtype=R.dtype) * atom[:, None].to(R.dtype)
    noisy = {**batch, P.R: R + eps, P.force_input: batch[P.forces] * atom[:, None].to(R.dtype)}
    return noisy, atom, eps


def forcefield_losses(model, batch: dict, weights: dict | None = None, dens: dict | None = None,
                      generator=None, create_graph: bool = True) -> dict[str, torch.Tensor]:
    """Losses of one batch; ``dens`` (``{p, sigma, fraction}``) turns DeNS on.

    Returns ``loss`` and its terms, plus energy MAE (eV) and force MAE (eV/Å per component) of the
    atoms and structures that have force and energy targets.
    """
    w = {**WEIGHT_DEFAULTS, **(weights or {})}
    scale = model.scale.to(batch[P.R].dtype)
    atom = None
    if dens is not None and float(dens.get("p", 0)) > 0:
        d = {**DENS_DEFAULTS, **dens}
        noisy, atom, eps = corrupt(batch, float(d["p"]), float(d["sigma"]), float(d["fraction"]), generator)
        if not bool(atom.any()):
            atom = None
    if atom is None:
        out = model(batch, forces=True, create_graph=create_graph)
    else:
        out = model(noisy, forces=True, create_graph=create_graph, force_input=noisy[P.force_input])
    e_err = out[P.energy] - batch[P.energy].to(out[P.energy].dtype)
    f_err = out[P.forces] - batch[P.forces].to(out[P.forces].dtype)
    keep = torch.ones(len(f_err), dtype=torch.bool, device=f_err.device) if atom is None else ~atom
    losses = {
        "energy": (e_err.abs() / scale).mean(),
        "forces": (torch.linalg.vector_norm(f_err[keep], dim=-1) / scale).mean() if bool(keep.any())
        else f_err.sum() * 0.0,
    }
    loss = w["energy"] * losses["energy"] + w["forces"] * losses["forces"]
    if atom is not None:
        target = eps[atom] / float(d["sigma"])
        losses["denoising"] = torch.linalg.vector_norm(out[P.noise_pred][atom] - target, dim=-1).mean()
        loss = loss + w["denoising"] * losses["denoising"]
        losses["corrupted_atoms"] = atom.float().mean().detach()
    losses["loss"] = loss
    losses["energy_mae"] = e_err.detach().abs().mean()
    losses["force_mae"] = f_err.detach()[keep].abs().mean()
    return losses
