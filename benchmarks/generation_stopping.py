"""Which stopping rule for generation from noise, and does the final relaxation help? MoreRed-JT
(shipped model) on N QM9 *validation* compositions with the same seed: t_conv = 0 alone vs
relaxation's patience rule vs a larger step budget.  Prints, per rule, valid / valid+unique %,
molecule stability, mean steps and wall time, as generated and after the final relaxation
(MoreRed's default relaxation rule, the generate() default) of the same structures.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/generation_stopping.py --n 24 [--rules chosen] [--variant ddpm]
"""

import argparse
import time

import numpy as np
import torch

from morered.generation.generate import generate, split_compositions
from morered.generation.metrics import check_molecules, summarize

#: every rule spells out its restart setting: generation's default re-noises a hovering run
#: (generation.generate.GENERATION_RESTART_*, rule 7), the rules measured before it did not
_NO = {"restart_patience": 0}
RULES = {
    "t_conv 0, max 1000": ({**_NO, "t_conv": 0}, 1000),
    "t_conv 0 + patience 50, max 1000 (relaxation's)": ({**_NO, "t_conv": 0, "patience": 50}, 1000),
    "t_conv 10, max 1000": ({**_NO}, 1000),
    "t_conv 10, max 2000 (no restart; the rule until 2026-12-05)": ({**_NO}, 2000),
    "t_conv 0, max 2000": ({**_NO, "t_conv": 0}, 2000),
    "t_conv 10, max 4000": ({**_NO}, 4000),
    "restart: patience 200, to t=300, <= 2, max 2000 (chosen)": ({"restart_patience": 200, "restart_t": 300,
                                                                  "max_restarts": 2}, 2000),
    "restart: patience 300, to t=500, <= 1, max 2000": ({"restart_patience": 300, "restart_t": 500,
                                                         "max_restarts": 1}, 2000),
    "restart: patience 100, to t=200, <= 4, max 2000": ({"restart_patience": 100, "restart_t": 200,
                                                         "max_restarts": 4}, 2000),
    "noise x0.9, t_conv 10, max 2000": ({**_NO, "noise_scale": 0.9}, 2000),
    "noise x0.8, t_conv 10, max 2000": ({**_NO, "noise_scale": 0.8}, 2000),
    "noise x0.7, t_conv 10, max 2000": ({**_NO, "noise_scale": 0.7}, 2000),
    "noise x0.5, t_conv 10, max 2000": ({**_NO, "noise_scale": 0.5}, 2000),
    "noise x1.1, t_conv 10, max 2000": ({**_NO, "noise_scale": 1.1}, 2000),
    "noise x1.2, t_conv 10, max 2000": ({**_NO, "noise_scale": 1.2}, 2000),
    "floor T-k, t_conv 10, max 2000": ({**_NO, "t_floor": 1000}, 2000),
    "floor 500-k, t_conv 10, max 2000": ({**_NO, "t_floor": 500}, 2000),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--variant", default="jt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", default="all", help="'all', 'chosen', or comma-separated rule numbers (1-based)")
    ap.add_argument("--model", default=None, help="model file (default: the shipped one of the variant)")
    ap.add_argument("--retries", type=int, default=0, help="fresh-noise runs of unconverged runs (default 0: the "
                    "single-run rules as measured here; generate()'s default is GENERATION_RETRIES = 2, see retry_unconverged.py)")
    args = ap.parse_args()
    rules = list(RULES.items())
    if args.variant == "ddpm":  # the fixed schedule has no stopping rule
        rules = [("fixed schedule T..1", ({}, 1000))]
    elif args.rules == "chosen":
        rules = [r for r in rules if "chosen" in r[0]]
    elif args.rules != "all":
        rules = [rules[int(k) - 1] for k in args.rules.split(",")]
    torch.set_num_threads(1)
    _, comps = split_compositions(args.n, args.seed, "val")
    print(f"{args.variant} ({args.model or 'shipped'}), {args.n} validation compositions, seed {args.seed}, 1 thread")
    for name, (over, steps) in rules:
        t = time.time()
        gen = generate(comps, args.variant, args.model, max_steps=steps, seed=args.seed, overrides=over, relax=True,
                       retries=args.retries)
        wall = time.time() - t
        for label, pos in (("as generated", [g.unrelaxed if g.unrelaxed is not None else g.positions for g in gen]),
                           ("+ relaxation", [g.positions for g in gen])):
            m = summarize(check_molecules([(g.numbers, x) for g, x in zip(gen, pos)]))
            print(f"{name:<50} {label:<13} valid {100 * m.validity:5.1f} %  valid+unique {100 * m.valid_unique:5.1f} %  "
                  f"atom stable {100 * m.atom_stability:5.1f} %  mol. stable {100 * m.molecule_stability:5.1f} %  "
                  f"mean steps {np.mean([g.steps_all for g in gen]):6.0f} + {np.mean([g.relax_steps for g in gen]):3.0f}  "
                  f"stopped early {np.mean([g.converged for g in gen]) * 100:5.1f} %  {wall:6.0f} s", flush=True)


if __name__ == "__main__":
    main()
