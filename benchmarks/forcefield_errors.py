"""Energy and force errors of force-field models on held-out GFN2-xTB labels of test-split molecules.

    python benchmarks/forcefield_errors.py --labels LABELS.npz MODEL.pt [MODEL.pt ...] [--json OUT]
        [--max-force 50]

Prints, per model and per structure kind, energy MAE (kcal/mol) and force MAE (kcal/mol/Å, per
component) over the ``test`` split of the label file (float64 evaluation, 1 thread).  With
``--max-force F`` one more row, ``max|F|<=F``: the test structures whose largest atomic force is at
most F eV/Å (the cap a model was trained with; every other row keeps all test structures).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from morered.forcefield.calculator import ForceField
from morered.forcefield.labels import Labels

EV_TO_KCAL = 23.060548


def errors(model_path, labels: Labels, max_force: float | None = None) -> dict:
    calc = ForceField(model_path)
    idx = labels.where("test")
    items = [(labels.numbers[labels.slices(k)], labels.positions[labels.slices(k)]) for k in idx]
    e, f = calc.evaluate(items, batch_size=64)
    biggest = labels.max_force()
    rows = {"all": lambda k: True}
    if max_force is not None:
        rows[f"max|F|<={max_force:g}"] = lambda k: biggest[k] <= max_force
    for kind in sorted(set(labels.kind[idx].tolist())):
        rows[kind] = lambda k, kind=kind: labels.kind[k] == kind
    out = {}
    for kind, member in rows.items():
        sel = [i for i, k in enumerate(idx) if member(k)]
        de = np.abs(e[sel] - labels.energy[idx[sel]]) * EV_TO_KCAL
        df = np.concatenate([np.abs(f[i] - labels.forces[labels.slices(idx[i])]).ravel() for i in sel]) * EV_TO_KCAL
        out[kind] = {"n": len(sel), "energy_mae_kcal": float(de.mean()), "force_mae_kcal_A": float(df.mean())}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--labels", required=True)
    p.add_argument("--json")
    p.add_argument("--max-force", type=float, help="also report the test structures with max atomic force <= this (eV/Å)")
    a = p.parse_args()
    torch.set_num_threads(1)
    labels = Labels.load(a.labels)
    res = {m: errors(m, labels, a.max_force) for m in a.models}
    for m, r in res.items():
        for kind, v in r.items():
            print(f"{m}\t{kind}\tn={v['n']}\tE MAE {v['energy_mae_kcal']:.3f} kcal/mol\tF MAE {v['force_mae_kcal_A']:.3f} kcal/mol/Å")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
