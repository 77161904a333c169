"""What the time head makes of each input kind: the predicted diffusion step of the inputs of
``tune_relax.py`` (the same 100 QM9 *validation* molecules), median and 10th/90th percentiles,
for one or more models.  A kind whose inputs score far below the step of equal-size Gaussian noise
(t = 100 inputs: RMSD 0.237 Å) is one the time head cannot see.

    python benchmarks/predicted_steps.py --kinds diffused_100,normal_mode_1500,etkdg \\
        src/morered/models/jt.pt runs/jt_soft/best.pt
"""

import argparse

import numpy as np
import torch

from morered import properties as P
from morered.data.batch import collate
from morered.data.qm9 import load_qm9, split_ids
from morered.evaluation.inputs import Structures, make_inputs
from morered.sampling.api import load_model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+", help="model files with a time head")
    p.add_argument("--kinds", default="diffused_100,diffused_150,normal_mode,normal_mode_1500,mmff_min,xtb_min,etkdg")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mols = load_qm9()
    val_ids = np.random.default_rng(0).permutation(split_ids(mols)["val"])[: args.n]
    refs = Structures.from_molecules(mols.select_ids(val_ids), kind="reference")
    models = [load_model(m) for m in args.models]
    print("kind".ljust(18) + "".join(m.ljust(34) for m in args.models))
    for kind in args.kinds.split(","):
        inp = make_inputs(kind, refs, seed=0)
        ok = [k for k in range(len(refs)) if inp.positions[k] is not None]
        batch = collate([inp.positions[k] for k in ok], [inp.numbers[k] for k in ok])
        cells = []
        for lm in models:
            with torch.no_grad():
                t = lm.model(batch, None)[P.t_pred].numpy() * lm.schedule.T
            cells.append(f"{np.median(t):5.0f} [{np.percentile(t, 10):.0f}-{np.percentile(t, 90):.0f}]".ljust(34))
        print(kind.ljust(18) + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
