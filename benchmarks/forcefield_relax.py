"""Relaxation quality of force-field model files on the relaxation benchmark's own inputs.

    python benchmarks/forcefield_relax.py runs/ff_plain_s1/best.pt runs/ff_dens_s1/best.pt \\
        --n 100 --kinds diffused_100,normal_mode_1500 [--json OUT]

The same QM9 test molecules and displaced inputs as ``morered benchmark relax --n N --seed S``
(read from its input cache when present), every model with the batched L-BFGS of the benchmark's
``mlff`` rows (ASE's steps, fmax 0.005 eV/Å, at most 1,000 steps, float32), scored by the
benchmark's own :func:`~morered.evaluation.benchmark.score`: median RMSD to the DFT geometry (Å,
Kabsch, all atoms), failure % (RMSD ratio > 1), converged %.  For models that are not shipped
(other seeds, later stages), so their relaxation rows compare with the committed benchmark's.
The JSON keeps every molecule's RMSD (``rmsd``, input order), and with two or more models the
last lines compare each model with the first on the same molecules (paired): median of the
per-molecule RMSD differences, how often it is lower, and the Wilcoxon signed-rank p-value.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from morered.evaluation.benchmark import score
from morered.evaluation.inputs import make_inputs, qm9_references
from morered.forcefield.calculator import ForceField


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default="diffused_100,normal_mode_1500")
    p.add_argument("--fmax", type=float, default=0.005)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    refs = qm9_references(args.n, args.seed)
    table = []
    for kind in args.kinds.split(","):
        inp = make_inputs(kind, refs, seed=args.seed, cache=True)
        ok = [k for k in range(len(refs)) if inp.positions[k] is not None]
        for path in args.models:
            calc = ForceField(path, dtype=torch.float32)
            t0 = time.perf_counter()
            res = calc.relax([(inp.numbers[k], inp.positions[k]) for k in ok], fmax=args.fmax,
                             max_steps=args.max_steps)
            wall = time.perf_counter() - t0
            sc = [score(inp.numbers[k], inp.positions[k], refs.positions[k], r.positions) for k, r in zip(ok, res)]
            row = {"model": path, "kind": kind, "n": len(ok),
                   "median_rmsd": float(np.median([s["rmsd"] for s in sc])),
                   "failure_pct": float(100 * np.mean([s["failure"] for s in sc])),
                   "converged_pct": float(100 * np.mean([r.converged for r in res])),
                   "errors": sum(r.error is not None for r in res),
                   "structures_per_s": len(ok) / wall, "threads": args.threads,
                   "ids": [int(k) for k in ok], "rmsd": [float(s["rmsd"]) for s in sc]}
            table.append(row)
            print(f"{path}\t{kind}\tn={row['n']}\tRMSD {row['median_rmsd']:.3f} Å\tfail {row['failure_pct']:.0f} %"
                  f"\tconverged {row['converged_pct']:.0f} %\terrors {row['errors']}"
                  f"\t{row['structures_per_s']:.2f} structures/s ({args.threads} thread)", flush=True)
    for row in paired(table):
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


def paired(table: list[dict]) -> list[str]:
    """Each model against the first, per kind, on the molecules both relaxed (paired)."""
    from scipy.stats import wilcoxon

    lines = []
    for kind in dict.fromkeys(r["kind"] for r in table):
        rows = [r for r in table if r["kind"] == kind]
        base = dict(zip(rows[0]["ids"], rows[0]["rmsd"]))
        for r in rows[1:]:
            mine = dict(zip(r["ids"], r["rmsd"]))
            common = sorted(set(base) & set(mine))
            d = np.array([mine[k] - base[k] for k in common])
            p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
            lines.append(f"paired, {kind}: {r['model']} - {rows[0]['model']}: median difference "
                         f"{np.median(d):+.4f} Å, lower on {np.mean(d < 0) * 100:.0f} % of {len(d)} molecules, "
                         f"Wilcoxon p = {p:.3g}")
    return lines


if __name__ == "__main__":
    main()
