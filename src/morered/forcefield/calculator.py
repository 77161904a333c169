"""ASE calculator for the PaiNN force fields, and batched evaluation of many structures."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from morered import properties as P
from morered.data.batch import centre, collate
from morered.forcefield.model import ForceField as ForceFieldModel
from morered.forcefield.model import load_forcefield

#: force fields shipped in ``morered/models`` (GFN2-xTB labels; see the models README)
SHIPPED = {"mlff": "mlff.pt", "mlff-dens": "mlff_dens.pt"}


def resolve_model(model, device="cpu") -> ForceFieldModel:
    """A force field from a model object, a model file, or a shipped name (``mlff``, ``mlff-dens``)."""
    if isinstance(model, ForceFieldModel):
        return model.to(device).eval()
    if isinstance(model, str) and model in SHIPPED:
        path = resources.files("morered.models").joinpath(SHIPPED[model])
        if not path.is_file():
            raise FileNotFoundError(f"the shipped force field {model!r} is not in this installation ({path})")
        model = str(path)
    if not Path(model).is_file():
        raise FileNotFoundError(f"force-field model file not found: {model}")
    return load_forcefield(model, device)


class ForceField(Calculator):
    """Energies (eV) and forces (eV/Å) of a PaiNN force field trained with ``morered train --model
    forcefield``; works with every ASE optimizer and MD integrator.

    >>> atoms.calc = ForceField("mlff")          # shipped name, model file, or model object
    >>> LBFGS(atoms).run(fmax=0.005)

    Args:
        model: a :class:`morered.forcefield.model.ForceField`, a model file, or a shipped name.
        device: torch device.
        dtype: ``float64`` (default; smooth energies for tight optimisation) or ``float32``.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model="mlff", device="cpu", dtype=torch.float64, **kw):
        super().__init__(**kw)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = resolve_model(model, self.device).to(dtype)
        self.model.requires_grad_(False)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        e, f = self.evaluate([self.atoms])
        self.results = {"energy": e[0], "free_energy": e[0], "forces": f[0]}

    def evaluate(self, structures, batch_size: int = 64):
        """Energies ``[n]`` (eV) and forces (list of ``[n_i, 3]`` eV/Å) of many structures (ase.Atoms
        or ``(numbers, positions)`` pairs), in batches."""
        energies, forces = [], []
        items = [(a.get_atomic_numbers(), a.get_positions()) if hasattr(a, "get_positions") else a for a in structures]
        items = [(np.asarray(z), np.asarray(x, np.float64)) for z, x in items]
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            b = collate([np.asarray(x, np.float64) for _, x in part], [np.asarray(z) for z, _ in part])
            # collate gives float32 positions: put the float64 ones back (centred per molecule)
            b[P.R] = centre(torch.as_tensor(np.concatenate([x for _, x in part]), dtype=torch.float64), b[P.idx_m])
            b = {k: v.to(self.device) for k, v in b.items()}
            b[P.R] = b[P.R].to(self.dtype)
            with torch.enable_grad():
                out = self.model(b, forces=True)
            energies.extend(out[P.energy].detach().cpu().double().numpy().tolist())
            f = out[P.forces].detach().cpu().double().numpy()
            n = b[P.n_atoms].cpu().numpy()
            forces.extend(np.split(f, np.cumsum(n)[:-1]))
        return np.array(energies), forces

    def relax(self, structures, fmax: float = 0.005, max_steps: int = 1000, batch_size: int = 128,
              progress: bool = False, **lbfgs):
        """Relax many structures at once with ASE's L-BFGS (:func:`morered.forcefield.optimize.batched_lbfgs`:
        the same steps as ``ase.optimize.LBFGS`` per structure, one batched evaluation per iteration).

        >>> results = ForceField("mlff").relax(list_of_atoms, fmax=0.005)
        >>> results[0].positions, results[0].converged

        Returns:
            one :class:`morered.forcefield.optimize.Relaxed` per structure, in input order.
        """
        from morered.forcefield.optimize import batched_lbfgs

        return batched_lbfgs(lambda part: self.evaluate(part, batch_size=batch_size), structures, fmax=fmax,
                             max_steps=max_steps, progress=progress, **lbfgs)
