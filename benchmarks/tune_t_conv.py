"""Choose the AS/JT convergence threshold t_conv on QM9 *validation* molecules (never test).

With deterministic updates, the run with threshold c is a prefix of the run that never stops
(plus the final mean step, which the long run takes too), so one long run per input kind gives
the result for every c at once.  Prints, per kind and c: median RMSD (Å, Kabsch, all atoms),
failure % (RMSD ratio > 1), converged % and mean steps.

    python benchmarks/tune_t_conv.py --n 100 --model runs/jt/best.pt
"""

import argparse
import json

import numpy as np

from morered.data.qm9 import load_qm9, split_ids
from morered.evaluation.inputs import Structures, make_inputs
from morered.evaluation.rmsd import kabsch_rmsd
from morered.sampling.api import relax

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=100)
p.add_argument("--model", default=None)
p.add_argument("--time-model", default=None)
p.add_argument("--variant", default="jt")
p.add_argument("--kinds", default="diffused_50,diffused_100,diffused_150,xtb_min")
p.add_argument("--t-conv", default="0,2,5,8,10,12,15,20,30")
p.add_argument("--max-steps", type=int, default=400)
p.add_argument("--final-step", default="mean", choices=["mean", "x0"])
p.add_argument("--stochastic", action="store_true")
p.add_argument("--out", default=None, help="JSON file for the table")
args = p.parse_args()

mols = load_qm9()
val_ids = np.random.default_rng(0).permutation(split_ids(mols)["val"])[: args.n]
refs = Structures.from_molecules(mols.select_ids(val_ids), kind="reference")
cs = [int(c) for c in args.t_conv.split(",")]
table = []
for kind in args.kinds.split(","):
    inp = make_inputs(kind, refs, seed=0)
    ok = [k for k in range(len(refs)) if inp.positions[k] is not None]
    atoms = [inp.atoms(k) for k in ok]
    # the prefix trick needs deterministic mean steps; otherwise one real run per threshold
    direct = args.stochastic or args.final_step != "mean"
    common = dict(time_model=args.time_model, max_steps=args.max_steps, stochastic=args.stochastic,
                  final_step=args.final_step)
    res = relax(atoms, args.model, args.variant, t_conv=-1, trajectory=True, **common)
    errors = [r.error for r in res if r.error is not None]
    if errors:
        print(f"{len(errors)} structures failed: {errors[:3]}")
    r_in = np.array([kabsch_rmsd(inp.positions[k], refs.positions[k]) for k in ok])
    t0 = np.array([r.t0 for r in res])
    print(f"\n{kind}: {len(ok)} molecules, input RMSD median {np.median(r_in):.3f} Å, "
          f"predicted t0 median {np.median(t0):.0f}")
    print(f"{'t_conv':>6} {'median RMSD':>12} {'failure %':>10} {'converged %':>12} {'mean steps':>11}")
    for c in cs:
        rm, conv, steps = [], [], []
        if direct:
            for k, r in zip(ok, relax(atoms, args.model, args.variant, t_conv=c, **common)):
                rm.append(np.inf if r.error else kabsch_rmsd(r.positions, refs.positions[k]))
                conv.append(r.converged), steps.append(r.steps)
        for k, r in zip(ok, [] if direct else res):
            if r.error is not None:  # counts as a failure that never converged
                rm.append(np.inf), conv.append(False), steps.append(r.steps)
                continue
            hit = [i for i, t in enumerate(r.trajectory_t) if t <= c]
            i = hit[0] if hit else len(r.trajectory) - 2
            rm.append(kabsch_rmsd(r.trajectory[i + 1], refs.positions[k]))
            conv.append(bool(hit))
            steps.append(min(i + 1, r.steps))
        rm = np.array(rm)
        row = {"kind": kind, "t_conv": c, "median_rmsd": float(np.median(rm)),
               "failure_pct": float(100 * np.mean(rm > r_in)), "converged_pct": float(100 * np.mean(conv)),
               "mean_steps": float(np.mean(steps)), "input_median_rmsd": float(np.median(r_in))}
        table.append(row)
        print(f"{c:6d} {row['median_rmsd']:12.4f} {row['failure_pct']:10.1f} {row['converged_pct']:12.1f} "
              f"{row['mean_steps']:11.1f}")
    if not direct:
        # alternative stopping rule: return the frame with the lowest predicted step on the path
        rm = np.array([np.inf if r.error else kabsch_rmsd(r.trajectory[int(np.argmin(r.trajectory_t))], refs.positions[k])
                       for k, r in zip(ok, res)])
        print(f"{'min-t':>6} {np.median(rm):12.4f} {100 * np.mean(rm > r_in):10.1f}")
        table.append({"kind": kind, "t_conv": "min-t frame", "median_rmsd": float(np.median(rm)),
                      "failure_pct": float(100 * np.mean(rm > r_in))})
if args.out:
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1)
