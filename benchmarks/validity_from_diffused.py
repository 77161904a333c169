"""Where does generation lose validity? Relax QM9 *validation* references diffused to t = 100, 300,
500 with MoreRed's default relaxation rule and score them with the generation checkers (the
paper's validity, EDM stabilities).  From t = 100 the bond graph survives and the result measures
the model's precision near equilibrium; from larger t the model must rebuild the graph, as in
generation from noise.  Three samplers per kind: the relaxation rule (deterministic, with its DDIM
tail), generation's (stochastic adaptive steps to t <= 10, then the final relaxation, exactly what
`morered generate` runs after x_T), and the fixed schedule from the predicted step (ITP,
stochastic; then the final relaxation).

    OMP_NUM_THREADS=1 python benchmarks/validity_from_diffused.py [--n 200] [--model M]
"""

import argparse
import dataclasses
import time

import numpy as np
import torch
from rdkit import RDLogger

from morered.data.qm9 import load_qm9, split_ids
from morered.evaluation.inputs import Structures, make_inputs
from morered.generation.metrics import check_molecules, summarize
from morered.generation.generate import Generated, generation_options, relax_generated
from morered.sampling.api import relax, resolve_model
from morered.sampling.samplers import adaptive, itp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default=None)
    ap.add_argument("--kinds", default="diffused_100,diffused_300,diffused_500")
    args = ap.parse_args()
    RDLogger.DisableLog("rdApp.*")
    torch.set_num_threads(1)
    mols = load_qm9()
    ids = np.random.default_rng(0).permutation(split_ids(mols)["val"])[: args.n]
    refs = Structures.from_molecules(mols.select_ids(ids), kind="reference")

    def score(label, positions, extra=""):
        m = summarize(check_molecules([(refs.numbers[k], x) for k, x in enumerate(positions)]))
        print(f"{label:<20} valid {100 * m.validity:5.1f} %  atom stable {100 * m.atom_stability:5.1f} %  "
              f"mol. stable {100 * m.molecule_stability:5.1f} %{extra}", flush=True)

    score("references", refs.positions)
    model = resolve_model(args.model, "jt")
    for kind in args.kinds.split(","):
        inp = make_inputs(kind, refs, seed=0)
        t = time.time()
        res = relax([inp.atoms(k) for k in range(len(refs))], model, "jt", max_steps=2000)
        score(kind + " relax", [r.positions for r in res],
              f"  mean steps {np.mean([r.steps for r in res]):.0f}  {time.time() - t:.0f} s (1 thread)")
        t = time.time()
        mols_in = [(refs.numbers[k], inp.positions[k]) for k in range(len(refs))]
        T = model.schedule.T
        fixed = dataclasses.replace(generation_options("ddpm", T), t_start=None, max_steps=2000)
        for label, sampler, opts in (("gen.", adaptive, generation_options("jt", T)), ("itp stoch.", itp, fixed)):
            t = time.time()
            res = sampler(model.model, mols_in, model.schedule, opts)
            gen = [Generated(z, r.positions, r.steps, r.converged, r.t_final, error=r.error)
                   for (z, _), r in zip(mols_in, res)]
            relax_generated(gen, model, "jt")
            score(f"{kind} {label}", [g.positions for g in gen],
                  f"  mean steps {np.mean([g.steps for g in gen]):.0f} + {np.mean([g.relax_steps for g in gen]):.0f}"
                  f"  {time.time() - t:.0f} s (1 thread)")


if __name__ == "__main__":
    main()
