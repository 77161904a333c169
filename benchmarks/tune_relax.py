"""Choose the AS/JT relaxation rule (stopping, tail, jumps) on QM9 *validation* molecules (never test).

Every rule relaxes the same inputs; prints per input kind and rule: median RMSD to the DFT geometry
(Å, Kabsch, all atoms), failure % (RMSD ratio > 1), mean reverse steps, mean model evaluations
per structure, structures/s, and how the relaxations stopped.

    python benchmarks/tune_relax.py --n 100 --threads 1 \\
        --rule "p50:patience=50" --rule "p10+tail35/7:patience=10,tail_t=35,tail_steps=7"
"""

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch

from morered.data.qm9 import load_qm9, split_ids
from morered.evaluation.inputs import Structures, make_inputs
from morered.evaluation.rmsd import kabsch_rmsd
from morered.sampling.api import relax, resolve_model


def parse_rule(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    kw = {}
    for item in filter(None, spec.split(",")):
        k, v = item.split("=")
        kw[k] = float(v) if "." in v else int(v)
    return name, kw


def ani_energies(numbers_positions) -> np.ndarray:
    """ANI-1x single-point energies (kcal/mol) of (numbers, positions) pairs, batched; NaN where not possible."""
    from morered.evaluation.energies import HARTREE_TO_KCAL, ani_energies as ani

    z, x = zip(*numbers_positions)
    return ani(list(z), list(x), "ani1x") * HARTREE_TO_KCAL


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--model", default=None)
    p.add_argument("--variant", default="jt")
    p.add_argument("--time-model", default=None,
                   help="separate time predictor paired with --model (AS / ITP), e.g. runs/time_soft/best.pt")
    p.add_argument("--kinds", default="diffused_50,diffused_100,diffused_150,xtb_min")
    p.add_argument("--rule", action="append", default=[], help="NAME:key=value,... (relax() keywords)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--temperature", type=float, default=300.0, help="normal_mode inputs' temperature (K)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the table")
    p.add_argument("--float64", action="store_true", help="evaluate the networks in float64 (the reverse steps "
                   "are float64 either way)")
    p.add_argument("--ani", action="store_true", help="also ANI-1x ΔE (relaxed - reference, kcal/mol): median, "
                   "%% within 1 kcal/mol, 90th percentile (needs the peers extra)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rules = [parse_rule(r) for r in args.rule] or [("default", {})]

    mols = load_qm9()
    val_ids = np.random.default_rng(0).permutation(split_ids(mols)["val"])[: args.n]
    refs = Structures.from_molecules(mols.select_ids(val_ids), kind="reference")
    model = resolve_model(args.model, args.variant, time_model=args.time_model)
    if args.float64:
        model.model.double()
    table = []
    for kind in args.kinds.split(","):
        inp = make_inputs(kind, refs, seed=0, temperature=args.temperature)
        ok = [k for k in range(len(refs)) if inp.positions[k] is not None]
        atoms = [inp.atoms(k) for k in ok]
        r_in = np.array([kabsch_rmsd(inp.positions[k], refs.positions[k]) for k in ok])
        print(f"\n{kind}: {len(ok)} validation molecules, input RMSD median {np.median(r_in):.3f} Å "
              f"({args.threads} thread(s), batch {args.batch_size})")
        if args.ani:
            e_ref = ani_energies([(refs.numbers[k], refs.positions[k]) for k in ok])
            de_in = ani_energies([(refs.numbers[k], inp.positions[k]) for k in ok]) - e_ref
            print(f"input ANI-1x ΔE median {np.nanmedian(de_in):.2f} kcal/mol")
        print(f"{'rule':<28} {'median RMSD':>11} {'fail %':>7} {'steps':>6} {'evals':>6} {'struct/s':>9}"
              + ("   dE med  <1kcal%    p90" if args.ani else "") + "  stops")
        for name, kw in rules:
            t0 = time.perf_counter()
            res = relax(atoms, model, args.variant, max_steps=args.max_steps, batch_size=args.batch_size, **kw)
            wall = time.perf_counter() - t0
            rm = np.array([np.inf if r.error else kabsch_rmsd(r.positions, refs.positions[k]) for k, r in zip(ok, res)])
            row = {"kind": kind, "rule": name, **kw, "n": len(ok), "median_rmsd": float(np.median(rm)),
                   "failure_pct": float(100 * np.mean(rm > r_in)),
                   "mean_steps": float(np.mean([r.steps for r in res])),
                   "mean_evals": float(np.mean([len(r.trajectory_t or []) for r in res])),
                   "structures_per_s": len(ok) / wall, "stops": dict(Counter(r.stop for r in res)),
                   "input_median_rmsd": float(np.median(r_in)), "threads": args.threads}
            extra = ""
            if args.ani:
                de = ani_energies([(refs.numbers[k], r.positions if r.positions is not None else inp.positions[k])
                                   for k, r in zip(ok, res)]) - e_ref
                row.update(ani_de_median=float(np.nanmedian(de)), ani_within_1=float(100 * np.mean(de <= 1.0)),
                           ani_de_p90=float(np.nanpercentile(de, 90)))
                extra = f" {row['ani_de_median']:8.2f} {row['ani_within_1']:7.1f} {row['ani_de_p90']:6.2f}"
            table.append(row)
            stops = " ".join(f"{k}:{v}" for k, v in sorted(row["stops"].items()))
            print(f"{name:<28} {row['median_rmsd']:11.4f} {row['failure_pct']:7.1f} {row['mean_steps']:6.1f} "
                  f"{row['mean_evals']:6.1f} {row['structures_per_s']:9.2f}{extra}  {stops}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
