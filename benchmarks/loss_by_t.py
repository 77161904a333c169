"""Where along the diffusion does a model's validation loss differ?  The training's validation loss
averages the noise error over t ~ U{1..T}; this script breaks it down by step.

For every model and every step t of ``--steps``, the first ``--n`` QM9 *validation* molecules (the
training's ``data.limit_val`` set) are noised to exactly t with the same random numbers for every
model (one seed per t and batch), and it prints per t:

- the noise loss L_eps = mean over atoms of ||eps - eps_hat||^2 / 3 (what training minimises),
  with the noise head conditioned as in training: JT on its own time prediction, DDPM on the true t;
- for models with a time head, the mean absolute error of the predicted step (in steps).

    OMP_NUM_THREADS=1 python benchmarks/loss_by_t.py --n 1000 src/morered/models/jt.pt runs/other/best.pt
"""

import argparse
import json
import time

import numpy as np
import torch

from morered import properties as P
from morered.data.qm9 import load_qm9, split_ids
from morered.diffusion.schedule import diffuse
from morered.sampling.models import load_model
from morered.training.train import loader

STEPS = (10, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


@torch.no_grad()
def loss_by_t(lm, val, steps, batch_size=64):
    out = {}
    for t in steps:
        noise_sum, time_sum, n_atoms, n_mol = 0.0, 0.0, 0, 0
        for b, batch in enumerate(loader(val, batch_size, shuffle=False, num_workers=0)):
            g = torch.Generator().manual_seed(10_000 * t + b)
            m = len(batch[P.n_atoms])
            tt = torch.full((m,), t, dtype=torch.long)
            xt, eps = diffuse(batch[P.R], tt, batch[P.idx_m], lm.schedule, g)
            noisy = {**batch, P.R: xt}
            t_norm = tt.double() / lm.schedule.T
            cond = None if lm.model_type == "jt" else t_norm.float()
            res = lm.model(noisy, cond)
            if P.eps_pred in res:
                noise_sum += float(((res[P.eps_pred].double() - eps.double()) ** 2).sum() / 3.0)
            if P.t_pred in res:
                time_sum += float((res[P.t_pred].double().clamp(0, 1) - t_norm).abs().sum() * lm.schedule.T)
            n_atoms += int(batch[P.R].shape[0])
            n_mol += m
        out[t] = {"noise": noise_sum / n_atoms if lm.has_noise else None,
                  "time_mae_steps": time_sum / n_mol if lm.has_time else None}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=1000, help="first N validation molecules (training's limit_val)")
    ap.add_argument("--steps", default=",".join(map(str, STEPS)))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    qm9 = load_qm9()
    val = qm9.select_ids(split_ids(qm9)["val"])
    val = val.subset(np.arange(min(args.n, len(val))))
    results = {}
    for path in args.models:
        t0 = time.time()
        lm = load_model(path)
        lm.model.eval()
        results[path] = loss_by_t(lm, val, steps)
        print(f"# {path} ({lm.model_type}): {time.time() - t0:.0f} s, {args.threads} thread(s)", flush=True)
    print(f"\nnoise loss by step ({len(val)} validation molecules; same noise for every model)")
    print("t     " + "".join(f"{p[-28:]:>30}" for p in args.models))
    for t in steps:
        cells = []
        for p in args.models:
            r = results[p][t]
            cells.append(f"{r['noise']:.5f}" if r["noise"] is not None else "-")
            if r["time_mae_steps"] is not None:
                cells[-1] += f" (t MAE {r['time_mae_steps']:5.1f})"
        print(f"{t:<6}" + "".join(f"{c:>30}" for c in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": len(val), "steps": steps, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
