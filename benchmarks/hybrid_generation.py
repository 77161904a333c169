"""Generation with a fixed-schedule DDPM phase at large t, then MoreRed-JT's adaptive schedule.

Why (``benchmarks/loss_by_t.py``): at t >= 400 DDPM's noise model, given the true step, has a 5-7 %
lower noise loss than the JT head conditioned on its own time estimate; at t <= 300 JT is better,
and below t = 300 the adaptive schedule beats the fixed one (README, generation analysis).  So: from
x_T, the fixed schedule with the shipped ``ddpm`` model down to ``--switch``, then generation's JT
sampler (restarts and all) from there, within the same 2,000-step budget, then the final relaxation.

The compositions and x_T are those of ``benchmarks/final_relaxation.py make`` with the same ``--n``
and ``--seed`` (QM9 *validation* split); with ``--baseline FILE`` (that script's unrelaxed output)
the baseline is relaxed here too and the two are compared molecule by molecule.

    OMP_NUM_THREADS=1 python benchmarks/hybrid_generation.py --n 500 --seed 0 --switch 400 \
        --baseline runs/gen_val500_s0.extxyz --out runs/hybrid_val500_s0.extxyz
"""

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write

from morered.generation.generate import (GENERATION_MAX_STEPS, Generated, generation_options, initial_noise,
                                         relax_generated, split_compositions)
from morered.generation.metrics import check_molecules, summarize
from morered.sampling.api import resolve_model
from morered.sampling.samplers import adaptive, ddpm


def score(label, numbers, positions):
    checks = check_molecules(list(zip(numbers, positions)))
    m = summarize(checks)
    print(f"{label:<40} valid {100 * m.validity:5.1f} %  mol. stable {100 * m.molecule_stability:5.1f} %  "
          f"atom stable {100 * m.atom_stability:5.1f} %", flush=True)
    return np.array([c.valid for c in checks])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--switch", type=int, default=400, help="step where the fixed DDPM phase hands over to JT")
    ap.add_argument("--ddpm-model", default="ddpm")
    ap.add_argument("--jt-model", default="jt")
    ap.add_argument("--baseline", default=None, help="unrelaxed JT generations of the same compositions and x_T")
    ap.add_argument("--out", default=None, help="write the unrelaxed hybrid generations here (extxyz)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, comps = split_compositions(args.n, args.seed, "val")
    d, j = resolve_model(args.ddpm_model, "ddpm"), resolve_model(args.jt_model, "jt")
    T = j.schedule.T
    if not torch.equal(d.schedule.alpha_bar, j.schedule.alpha_bar):
        sys.exit("the two models use different noise schedules")
    t0 = time.time()
    mols = initial_noise(comps, args.seed)
    opts_d = dataclasses.replace(generation_options("ddpm", T, seed=args.seed), max_steps=T - args.switch)
    mid = ddpm(d.model, mols, d.schedule, opts_d, None)
    budget = GENERATION_MAX_STEPS - (T - args.switch)
    opts_j = generation_options("jt", T, max_steps=budget, seed=args.seed)
    res = adaptive(j.model, [(z, r.positions) for (z, _), r in zip(mols, mid)], j.schedule, opts_j, None)
    gen = [Generated(z, r.positions, r.steps + (T - args.switch), r.converged, r.t_final, r.trajectory_t, None,
                     r.error) for (z, _), r in zip(mols, res)]
    unrelaxed = [g.positions for g in gen]
    relax_generated(gen, j, "jt", seed=args.seed)
    wall = time.time() - t0
    print(f"hybrid: DDPM fixed schedule {T} -> {args.switch} ({args.ddpm_model}), then JT adaptive ({args.jt_model}, "
          f"<= {budget} steps), {args.n} validation compositions, seed {args.seed}, {wall:.0f} s, 1 thread; "
          f"mean JT steps {np.mean([r.steps for r in res]):.0f}")
    score("hybrid, as generated", comps, unrelaxed)
    hv = score("hybrid, relaxed", comps, [g.positions for g in gen])
    if args.out:
        write(args.out, [Atoms(numbers=z, positions=x) for z, x in zip(comps, unrelaxed)], format="extxyz")
    if args.baseline:
        from morered.sampling.api import relax

        frames = read(args.baseline, ":")
        if [list(a.numbers) for a in frames] != [list(z) for z in comps]:
            sys.exit(f"{args.baseline} holds other compositions")
        rel = relax(frames, j, "jt", seed=args.seed)
        bv = score("JT from noise (baseline), relaxed", comps,
                   [r.positions if r.positions is not None else a.positions for r, a in zip(rel, frames)])
        print(f"per molecule: valid in hybrid only {int((hv & ~bv).sum())}, in baseline only {int((bv & ~hv).sum())}, "
              f"both {int((hv & bv).sum())}, neither {int((~hv & ~bv).sum())}")


if __name__ == "__main__":
    main()
