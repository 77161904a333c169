"""Compare trained JT models (e.g. PaiNN vs SO3Net backbones) on QM9 *validation* molecules:
parameters, training steps reached, validation loss (the training's own validation: first
``--n-val`` validation molecules, batches of the model's batch size, fixed t and noise per batch)
and relaxation of t = 100 diffused inputs (``--n-relax`` validation molecules chosen as in
benchmarks/tune_t_conv.py, default relaxation settings of ``morered.sampling.api.relax``).

    python benchmarks/compare_backbones.py runs/cmp_painn/model.pt runs/cmp_so3net/model.pt --threads 1
"""

import argparse
import time

import numpy as np
import torch

from morered.data.qm9 import load_qm9, split_ids
from morered.evaluation.inputs import Structures, make_inputs
from morered.evaluation.rmsd import kabsch_rmsd
from morered.sampling.api import relax
from morered.training.task import DiffusionTask

p = argparse.ArgumentParser()
p.add_argument("models", nargs="+")
p.add_argument("--n-val", type=int, default=1000)
p.add_argument("--n-relax", type=int, default=50)
p.add_argument("--kind", default="diffused_100")
p.add_argument("--threads", type=int, default=1)
args = p.parse_args()
torch.set_num_threads(args.threads)

mols = load_qm9()
val_all = mols.select_ids(split_ids(mols)["val"])
val = val_all.subset(np.arange(min(args.n_val, len(val_all))))
relax_ids = np.random.default_rng(0).permutation(split_ids(mols)["val"])[: args.n_relax]
refs = Structures.from_molecules(mols.select_ids(relax_ids), kind="reference")
inputs = make_inputs(args.kind, refs, seed=0)
atoms = [inputs.atoms(k) for k in range(len(refs))]
r_in = np.array([kabsch_rmsd(inputs.positions[k], refs.positions[k]) for k in range(len(refs))])

print(f"{'model':<32} {'backbone':>8} {'params':>8} {'steps':>6} {'val loss':>9} {'val noise':>9} "
      f"{'val time':>9} {'med RMSD':>9} {'fail %':>7} {'steps/mol':>9} {'relax s':>8}")
for path in args.models:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    task = DiffusionTask(ckpt["config"], ckpt["dataset_info"])
    task.ema.load_state_dict(ckpt["state_dict"])
    task.ema.eval()
    bs = int(ckpt["config"]["data"]["batch_size"])
    sums, n = {}, 0
    with torch.no_grad():
        for b, start in enumerate(range(0, len(val), bs)):
            batch = val.batch(np.arange(start, min(start + bs, len(val))))
            losses = task.losses(task.ema, batch, generator=torch.Generator().manual_seed(1000 + b))
            m = len(batch["n_atoms"])
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v) * m
            n += m
    val_loss = {k: v / n for k, v in sums.items()}
    t0 = time.perf_counter()
    res = relax(atoms, path, "jt")
    wall = time.perf_counter() - t0
    rm = np.array([np.inf if r.error else kabsch_rmsd(r.positions, refs.positions[k]) for k, r in enumerate(res)])
    name = ckpt["model_args"]["representation"].get("name", "painn")
    n_par = sum(v.numel() for v in task.ema.parameters())
    print(f"{path:<32} {name:>8} {n_par:>8} {ckpt['global_step']:>6} {val_loss['loss']:9.4f} "
          f"{val_loss.get('noise', float('nan')):9.4f} {val_loss.get('time', float('nan')):9.4f} "
          f"{np.median(rm):9.4f} {100 * np.mean(rm > r_in):7.1f} {np.mean([r.steps for r in res]):9.1f} {wall:8.1f}")
print(f"inputs: {args.kind} of {len(refs)} QM9 validation molecules, input RMSD median {np.median(r_in):.3f} Å")
