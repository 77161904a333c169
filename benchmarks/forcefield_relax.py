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
With ``--xtb`` each input's largest GFN2-xTB atomic force is recorded too (``input_max_force``,
eV/Å), and the paired lines are repeated for the inputs above and at or below ``--cap`` (default
50 eV/Å, the training cap of the stage-2+ force fields): do the models differ where one of them
had to extrapolate beyond its training forces?
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from morered.evaluation.baselines import relax_xtb
from morered.evaluation.benchmark import score
from morered.evaluation.rmsd import kabsch_rmsd
from morered.evaluation.inputs import make_inputs, qm9_references
from morered.forcefield.calculator import ForceField
from morered.forcefield.labels import xtb_single_point


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
    p.add_argument("--cap", type=float, default=50.0,
                   help="with --xtb: also compare paired on the inputs whose largest GFN2-xTB force is above / "
                        "at or below this (eV/Å)")
    p.add_argument("--xtb", action="store_true",
                   help="also relax every input with GFN2-xTB (the labels' method, same optimizer settings) and "
                        "score each model by the RMSD of its minimum to GFN2-xTB's from the same input")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    refs = qm9_references(args.n, args.seed)
    table = []
    for kind in args.kinds.split(","):
        inp = make_inputs(kind, refs, seed=args.seed, cache=True)
        ok = [k for k in range(len(refs)) if inp.positions[k] is not None]
        xtb_min = input_force = None
        if args.xtb:  # the minimum a force field trained on GFN2-xTB labels should find
            input_force = [input_max_force(inp.numbers[k], inp.positions[k]) for k in ok]
            print(f"inputs\t{kind}\tlargest GFN2-xTB atomic force: median {np.nanmedian(input_force):.1f} eV/Å, "
                  f"{np.sum(np.array(input_force) > args.cap)} of {len(ok)} above {args.cap:g}", flush=True)
            for k, f in zip(ok, input_force):
                if not np.isfinite(f):
                    print(f"inputs\t{kind}\tmolecule {k}: GFN2-xTB failed on the input, left out of the split", flush=True)
            t0 = time.perf_counter()
            xr = [relax_xtb(inp.numbers[k], inp.positions[k], max_steps=args.max_steps, fmax=args.fmax) for k in ok]
            xtb_min = [r.positions for r in xr]
            sc = [score(inp.numbers[k], inp.positions[k], refs.positions[k], x) for k, x in zip(ok, xtb_min)]
            print(f"GFN2-xTB\t{kind}\tRMSD {np.median([s['rmsd'] for s in sc]):.3f} Å\t"
                  f"fail {100 * np.mean([s['failure'] for s in sc]):.0f} %\t{time.perf_counter() - t0:.0f} s", flush=True)
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
            if xtb_min is not None:
                to_xtb = [kabsch_rmsd(r.positions, x) if r.positions is not None and x is not None else np.nan
                          for r, x in zip(res, xtb_min)]
                row["rmsd_to_xtb"] = [float(v) for v in to_xtb]
                row["median_rmsd_to_xtb"] = float(np.nanmedian(to_xtb))
                row["input_max_force"] = [float(v) for v in input_force]
                print(f"{path}\t{kind}\tmedian RMSD to the GFN2-xTB minimum {row['median_rmsd_to_xtb']:.3f} Å", flush=True)
            table.append(row)
            print(f"{path}\t{kind}\tn={row['n']}\tRMSD {row['median_rmsd']:.3f} Å\tfail {row['failure_pct']:.0f} %"
                  f"\tconverged {row['converged_pct']:.0f} %\terrors {row['errors']}"
                  f"\t{row['structures_per_s']:.2f} structures/s ({args.threads} thread)", flush=True)
    for row in paired(table, cap=args.cap):
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


def input_max_force(numbers, positions) -> float:
    """The largest atomic GFN2-xTB force of an input (eV/Å), NaN where xTB fails on it."""
    try:
        return float(np.linalg.norm(xtb_single_point(numbers, positions)[1], axis=1).max())
    except Exception:  # noqa: BLE001 - an SCF failure leaves this input out of the split, not the run
        return float("nan")


def paired(table: list[dict], cap: float | None = None) -> list[str]:
    """Each model against the first, per kind, on the molecules both relaxed (paired), by RMSD to the
    DFT geometry (and to the GFN2-xTB minimum when measured); with ``cap`` and the inputs' forces
    measured, also on the inputs whose largest force is above / at or below ``cap``."""
    from scipy.stats import wilcoxon

    lines = []
    for kind in dict.fromkeys(r["kind"] for r in table):
        rows = [r for r in table if r["kind"] == kind]
        subsets = [("", None)]
        if cap is not None and "input_max_force" in rows[0]:
            force = dict(zip(rows[0]["ids"], rows[0]["input_max_force"]))
            subsets += [(f" (inputs above {cap:g} eV/Å)", {k for k, f in force.items() if f > cap}),
                        (f" (inputs at or below {cap:g} eV/Å)", {k for k, f in force.items() if f <= cap})]
        for field, what in (("rmsd", "RMSD to DFT"), ("rmsd_to_xtb", "RMSD to the GFN2-xTB minimum")):
            if field not in rows[0]:
                continue
            base = dict(zip(rows[0]["ids"], rows[0][field]))
            for r in rows[1:]:
                mine = dict(zip(r["ids"], r[field]))
                for label, keep in subsets:
                    common = [k for k in sorted(set(base) & set(mine)) if np.isfinite(base[k]) and np.isfinite(mine[k])
                              and (keep is None or k in keep)]
                    if not common:
                        continue
                    d = np.array([mine[k] - base[k] for k in common])
                    p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
                    lines.append(f"paired {what}, {kind}{label}: {r['model']} - {rows[0]['model']}: median difference "
                                 f"{np.median(d):+.4f} Å, lower on {np.mean(d < 0) * 100:.0f} % of {len(d)} molecules, "
                                 f"Wilcoxon p = {p:.3g}")
    return lines


if __name__ == "__main__":
    main()
