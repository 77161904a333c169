"""Does running an unconverged generation again from fresh noise pay?  Paired on fixed first runs.

An adaptive run from noise that the time head has not brought to t_conv within max_steps ends
mid-way (about a third of them with the shipped JT model); the final relaxation finishes it, but such
runs are valid far less often than converged ones (65-72 % vs 94-95 % on the 3 x 500 test runs of
``generate_n500_v4_restart``).  ``generate(retries=R)`` runs those compositions again from fresh noise
(seed ``retry_seed(seed, r)``), at most R times, keeping the last run: the model's own verdict picks
what to redo, no checker.

Here the first runs are *given* (made once), and only the unconverged ones are generated again, exactly
as ``generate(retries=R)`` would (same compositions, seeds and sampler options), so every row is paired
with the first: the script prints how many molecules each round makes valid / invalid.

    # validation: first runs made unrelaxed by final_relaxation.py make (500 validation compositions)
    OMP_NUM_THREADS=1 python benchmarks/retry_unconverged.py runs/gen_val500_s0.extxyz --split val --seed 0 --retries 2
    # test: the per-molecule CSV of a `morered benchmark generate` run made with --retries 0
    OMP_NUM_THREADS=1 python benchmarks/retry_unconverged.py benchmarks/results/generate_n500_v4_restart/results.csv \
        --split test --seed 0
"""

import argparse
import csv
import json
import sys
import time

import numpy as np
import torch


def first_runs(path: str, split: str, seed: int):
    """``(numbers, valid, smiles, converged, steps)`` of the given first runs, relaxed and scored as
    ``generate`` does (an unrelaxed extxyz is relaxed here with the default rule)."""
    from morered.generation.generate import split_compositions
    from morered.generation.metrics import check_molecules

    if path.endswith(".csv"):
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r["variant"] == "jt"]
        comps = split_compositions(len(rows), seed, split)[1]
        valid = np.array([r["valid"] == "True" for r in rows])
        smiles = [r["smiles"] or None for r in rows]
        converged = np.array([r["converged"] == "True" for r in rows])
        steps = np.array([int(r["steps"]) for r in rows])
        return comps, valid, smiles, converged, steps
    from ase.io import read

    from morered.sampling.api import relax

    frames = read(path, ":")
    ids, comps = split_compositions(len(frames), seed, split)
    if [int(a.info["qm9_id"]) for a in frames] != [int(i) for i in ids]:
        sys.exit(f"{path}: not the {split} draw of seed {seed}")
    res = relax(frames, None, "jt", seed=seed)
    pos = [r.positions if r.positions is not None else a.positions for r, a in zip(res, frames)]
    checks = check_molecules([(a.numbers, p) for a, p in zip(frames, pos)])
    steps = np.array([int(a.info["morered_steps"]) for a in frames])
    converged = np.array([bool(a.info.get("morered_converged", s < 2000)) for a, s in zip(frames, steps)])
    return comps, np.array([c.valid for c in checks]), [c.smiles for c in checks], converged, steps


def valid_unique(smiles) -> float:
    """The paper's valid+unique: valid and first of its SMILES, over all samples."""
    return len({s for s in smiles if s}) / len(smiles)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", help="first runs: unrelaxed .extxyz (final_relaxation.py make) or a benchmark results.csv")
    ap.add_argument("--split", choices=["val", "test"], required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from morered.generation.generate import generate, retry_seed
    from morered.generation.metrics import check_molecules

    comps, valid0, smiles, converged, steps = first_runs(args.first, args.split, args.seed)
    n = len(comps)
    valid, steps_all, runs = valid0.copy(), steps.astype(float), n
    rows = [{"round": 0, "valid": float(valid.mean()), "valid_unique": valid_unique(smiles),
             "converged": float(converged.mean()), "runs": runs, "mean_steps": float(steps_all.mean()), "gained": 0,
             "lost": 0, "seconds": 0.0}]
    print(f"{args.first}: {n} first runs, valid {100 * valid.mean():.1f} %, valid+unique "
          f"{100 * valid_unique(smiles):.1f} %, converged {100 * converged.mean():.1f} %, "
          f"mean steps {steps_all.mean():.0f}", flush=True)
    for r in range(1, args.retries + 1):
        redo = np.flatnonzero(~converged)
        if not len(redo):
            break
        t = time.time()
        again = generate([comps[k] for k in redo], "jt", seed=retry_seed(args.seed, r), retries=0, relax=True)
        checks = check_molecules([(g.numbers, g.positions if g.positions is not None else np.full((1, 3), np.nan))
                                  for g in again])
        for k, g, c in zip(redo, again, checks):
            valid[k], smiles[k], converged[k] = c.valid, c.smiles, g.converged
            steps_all[k] += g.steps
        runs += len(redo)
        gained, lost = int((valid & ~valid0).sum()), int((~valid & valid0).sum())
        rows.append({"round": r, "redone": int(len(redo)), "valid": float(valid.mean()),
                     "valid_unique": valid_unique(smiles),
                     "converged": float(converged.mean()), "runs": runs, "mean_steps": float(steps_all.mean()),
                     "gained": gained, "lost": lost, "seconds": time.time() - t})
        print(f"retry {r}: {len(redo)} redone, valid {100 * valid.mean():.1f} %, valid+unique "
              f"{100 * valid_unique(smiles):.1f} %, converged {100 * converged.mean():.1f} %, "
              f"vs first runs +{gained} / -{lost}, runs {runs} ({runs / n:.2f} per molecule), mean steps "
              f"{steps_all.mean():.0f}, {time.time() - t:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"first": args.first, "split": args.split, "seed": args.seed, "n": n, "rounds": rows}, f, indent=1)


if __name__ == "__main__":
    main()
