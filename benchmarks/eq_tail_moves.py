"""Do the relaxation's failures on inputs already at equilibrium move differently from the rest?

For 100 QM9 validation molecules (the tune_relax.py set) as GFN2-xTB and MMFF94 minima, relaxed
with the shipped JT model and the default rule: how far each structure moves (RMSD result vs
input), the moves of the failures (RMSD to the DFT geometry went up), and what reverting the small
moves of inputs judged at equilibrium would do to the median and the failure rate.

    OMP_NUM_THREADS=1 python benchmarks/eq_tail_moves.py
"""
import numpy as np
import torch

from morered.data.qm9 import load_qm9, split_ids
from morered.evaluation.inputs import Structures, make_inputs
from morered.evaluation.rmsd import kabsch_rmsd
from morered.sampling.api import relax, resolve_model
from morered.sampling.samplers import STOP_AT_EQUILIBRIUM


def main():
    torch.set_num_threads(1)
    mols = load_qm9()
    val_ids = np.random.default_rng(0).permutation(split_ids(mols)["val"])[:100]
    refs = Structures.from_molecules(mols.select_ids(val_ids), kind="reference")
    model = resolve_model(None, "jt")
    for kind in ["xtb_min", "mmff_min"]:
        inp = make_inputs(kind, refs, seed=0)
        ok = [k for k in range(len(refs)) if inp.positions[k] is not None]
        res = relax([inp.atoms(k) for k in ok], model, "jt")
        move = np.array([kabsch_rmsd(r.positions, inp.positions[k]) for k, r in zip(ok, res)])
        r_in = np.array([kabsch_rmsd(inp.positions[k], refs.positions[k]) for k in ok])
        r_out = np.array([kabsch_rmsd(r.positions, refs.positions[k]) for k, r in zip(ok, res)])
        eq = np.array([r.stop == STOP_AT_EQUILIBRIUM for r in res])
        fail = r_out > r_in
        print(f"{kind}: {len(ok)} structures, {eq.sum()} judged at equilibrium, {fail.sum()} failures")
        print("  move RMS (Å) of the failures:", np.round(np.sort(move[fail]), 4))
        print("  move RMS (Å) of all at equilibrium, 10/25/50/75/90 %:", np.round(np.quantile(move[eq], [.1, .25, .5, .75, .9]), 4))
        for thr in [0.005, 0.01, 0.015, 0.02]:
            revert = eq & (move < thr)  # leave the input as it was
            r = np.where(revert, r_in, r_out)
            print(f"  revert moves < {thr} Å: median {np.median(r):.4f} Å, failures {100 * np.mean(r > r_in):.1f} %, "
                  f"{revert.sum()} reverted")


if __name__ == "__main__":
    main()
