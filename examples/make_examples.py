"""Regenerate examples/perturbed.xyz and examples/reference.xyz: 16 QM9 test molecules (drawn with
seed 0 from the fixed test split) and copies diffused to t = 100 (~0.25 Å RMSD) with seed 0.

    python examples/make_examples.py
"""

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import write

from morered.data.qm9 import load_qm9, split_ids
from morered.diffusion.schedule import NoiseSchedule, diffuse

here = Path(__file__).parent
mols = load_qm9()
ids = np.sort(np.random.default_rng(0).choice(split_ids(mols)["test"], 16, replace=False))
test = mols.select_ids(ids)
batch = test.batch(range(len(test)))
g = torch.Generator().manual_seed(0)
xt, _ = diffuse(batch["positions"].double(), torch.full((len(test),), 100), batch["idx_m"], NoiseSchedule(), g)
refs, inputs = [], []
for k, x in enumerate(torch.split(xt, batch["n_atoms"].tolist())):
    pos, num = test.molecule(k)
    info = {"name": f"qm9_{int(test.ids[k])}", "qm9_id": int(test.ids[k])}
    refs.append(Atoms(numbers=num, positions=np.asarray(pos, np.float64), info=dict(info)))
    inputs.append(Atoms(numbers=num, positions=x.numpy(), info={**info, "diffusion_t": 100}))
write(here / "reference.xyz", refs, format="extxyz")
write(here / "perturbed.xyz", inputs, format="extxyz")
print(f"wrote {len(inputs)} structures")
