"""Which final relaxation for generated molecules?  Paired on one fixed set of generations.

Generation from noise is a chaotic stochastic process: two runs of the same model are two draws
(±3 points of validity on 256 compositions), so comparing final-relaxation settings on fresh
generations measures mostly noise.  Here the unrelaxed generations are made once and saved, then
every setting relaxes *the same* structures, so differences are paired (the script prints how many
molecules each setting makes valid / invalid relative to the first).

    # 1. N QM9 *validation* compositions (seeded draw), generated without the final relaxation
    OMP_NUM_THREADS=1 python benchmarks/final_relaxation.py make --n 500 --seed 0 --out runs/gen_val500_s0.extxyz
    # 2. relax them with each setting and score (the MoreRed paper's checker)
    OMP_NUM_THREADS=1 python benchmarks/final_relaxation.py sweep runs/gen_val500_s0.extxyz [--settings 0,1,2]
"""

import argparse
import sys
import json
import time

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write

from morered.generation.metrics import check_molecules, summarize

#: relaxation settings measured (keyword arguments of morered.relax); 0 is generate()'s default
SETTINGS = {
    "default relaxation rule (generate's final relaxation)": {},
    "no final relaxation": None,
    "tail from t = 50": {"tail_scale": 0.0, "tail_t": 50},
    "tail from t = 150": {"tail_scale": 0.0, "tail_t": 150},
    "tail from t = 200": {"tail_scale": 0.0, "tail_t": 200},
    "tail from t = 100, 50 steps": {"tail_scale": 0.0, "tail_t": 100, "tail_steps": 50},
    "tail from t = 100, 100 steps": {"tail_scale": 0.0, "tail_t": 100, "tail_steps": 100},
    "final step x0": {"final_step": "x0"},
    "no tail (mean steps to t_conv)": {"tail_t": 0, "tail_steps": 0, "tail_scale": 0.0, "eq_tail_t": 0},
    "stochastic, patience 10": {"stochastic": True},
    "relaxed twice (default rule)": "twice",
}


def make(args):
    from morered.generation.generate import generate, split_compositions

    ids, comps = split_compositions(args.n, args.seed, "val")
    t = time.time()
    gen = generate(comps, "jt", args.model, seed=args.seed, relax=False, progress=sys.stderr.isatty(),
                   retries=args.retries)
    frames = []
    for i, g in zip(ids, gen):
        a = Atoms(numbers=g.numbers, positions=g.positions)
        a.info.update(qm9_id=int(i), morered_steps=int(g.steps), morered_converged=bool(g.converged),
                      morered_retries=int(g.retries), seed=args.seed)
        frames.append(a)
    write(args.out, frames, format="extxyz")
    print(f"{len(frames)} unrelaxed generations ({args.model or 'shipped jt'}, seed {args.seed}) -> {args.out}, "
          f"{time.time() - t:.0f} s")


def sweep(args):
    from morered.sampling.api import relax

    frames = read(args.file, ":")
    names = list(SETTINGS)
    chosen = names if args.settings == "all" else [names[int(k)] for k in args.settings.split(",")]
    settings = {name: (SETTINGS[name], args.model) for name in chosen}
    for path in filter(None, (args.relax_models or "").split(",")):  # the default rule, another model
        settings[f"default rule, relaxed by {path}"] = ({}, path)
    first = None
    rows = {}
    for name, (kw, model) in settings.items():
        t = time.time()
        if kw is None:
            pos = [a.positions for a in frames]
        else:
            once = relax(frames, model, "jt", seed=args.seed) if kw == "twice" else \
                relax(frames, model, "jt", seed=args.seed, **kw)
            pos = [r.positions if r.positions is not None else a.positions for r, a in zip(once, frames)]
            if kw == "twice":
                again = relax([Atoms(numbers=a.numbers, positions=p) for a, p in zip(frames, pos)], model,
                              "jt", seed=args.seed)
                pos = [r.positions if r.positions is not None else p for r, p in zip(again, pos)]
        checks = check_molecules([(a.numbers, p) for a, p in zip(frames, pos)])
        m = summarize(checks)
        valid = np.array([c.valid for c in checks])
        if first is None:
            first = valid
        gained, lost = int((valid & ~first).sum()), int((~valid & first).sum())
        rows[name] = {**m.to_dict(), "gained": gained, "lost": lost, "seconds": time.time() - t}
        print(f"{name[-55:]:<55} valid {100 * m.validity:5.1f} %  mol. stable {100 * m.molecule_stability:5.1f} %  "
              f"atom stable {100 * m.atom_stability:5.1f} %  vs first: +{gained} / -{lost}  "
              f"{time.time() - t:5.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"file": args.file, "n": len(frames), "rows": rows}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("make")
    a.add_argument("--n", type=int, default=500)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", required=True)
    a.add_argument("--retries", type=int, default=0, help="fresh-noise runs of unconverged runs (default 0: "
                   "first runs only, as this file's measurements were made; generate()'s default is GENERATION_RETRIES = 2)")
    b = sub.add_parser("sweep")
    b.add_argument("file")
    b.add_argument("--settings", default="all", help="'all' or comma-separated indices (0-based) of SETTINGS")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", default=None)
    b.add_argument("--relax-models", default=None,
                   help="comma-separated model files: one more row each, the default rule with that model")
    for p in (a, b):
        p.add_argument("--model", default=None, help="model file (default: the shipped jt)")
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    make(args) if args.cmd == "make" else sweep(args)


if __name__ == "__main__":
    main()
