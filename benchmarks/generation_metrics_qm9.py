"""Sanity check of the generation metrics on QM9's own DFT geometries: N molecules drawn with a
seed from the test and the training split (published for all of QM9 under EDM's tables: atom /
molecule stability 99.0 / 95.2 %, valid 97.7 %).

    python benchmarks/generation_metrics_qm9.py --n 1000
"""

import argparse

import numpy as np

from morered.data.qm9 import load_qm9, split_ids
from morered.generation.metrics import evaluate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    q = load_qm9()
    for split in ("test", "train"):
        ids = np.random.default_rng(args.seed).choice(split_ids(q)[split], args.n, replace=False)
        sel = q.select_ids(ids)
        m, _ = evaluate([(sel.molecule(k)[1], sel.molecule(k)[0]) for k in range(len(sel))])
        print(f"QM9 {split} split, {args.n} molecules (seed {args.seed}):")
        print("\n".join("  " + line for line in m.lines()))


if __name__ == "__main__":
    main()
