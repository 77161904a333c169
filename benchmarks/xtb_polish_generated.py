"""Score generated molecules before and after a GFN2-xTB polish (a measurement, not a feature).

    python benchmarks/xtb_polish_generated.py benchmarks/results/generate_n500_v4_restart/generated_jt.extxyz \
        --fmax 0.05 --json /tmp/polish.json

Every structure of the file is minimised with GFN2-xTB (tblite) + ASE L-BFGS and checked with the
paper's validity checker and EDM's molecule stability (``morered.generation.metrics``) before and
after; a structure xTB fails on keeps its unpolished score and is counted in ``errors``.
"""

from __future__ import annotations

import argparse
import json
import time

import ase.io
import numpy as np

from morered.data.displacements import xtb_minimize
from morered.generation.metrics import check_molecule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", help="generated structures (any ase.io format)")
    ap.add_argument("--fmax", type=float, default=0.05, help="L-BFGS force threshold, eV/Å")
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--json", help="per-structure rows")
    args = ap.parse_args()
    rows, t0 = [], time.perf_counter()
    for i, atoms in enumerate(ase.io.read(args.file, ":")):
        z, x = atoms.numbers, atoms.positions
        before = check_molecule(z, x)
        row = {"i": i, "n_atoms": len(z), "valid_before": before.valid, "stable_before": before.stable}
        try:
            y, steps, converged, _ = xtb_minimize(z, x, args.max_steps, args.fmax, 0)
            after = check_molecule(z, y)
            row.update(valid_after=after.valid, stable_after=after.stable, steps=steps, converged=converged,
                       error=None, reason_after=after.reason,
                       moved=float(np.sqrt((((y - y.mean(0)) - (x - x.mean(0))) ** 2).sum(1).mean())))
        except Exception as e:  # an SCF failure: counted, the structure keeps its unpolished score
            row.update(valid_after=before.valid, stable_after=before.stable, steps=0, converged=False,
                       error=f"{type(e).__name__}: {e}", reason_after=before.reason, moved=None)
        rows.append(row)
    n = len(rows)
    pct = lambda key: 100.0 * sum(r[key] for r in rows) / n  # noqa: E731
    gained = sum(r["valid_after"] and not r["valid_before"] for r in rows)
    lost = sum(r["valid_before"] and not r["valid_after"] for r in rows)
    print(f"{n} structures, {time.perf_counter() - t0:.0f} s; valid {pct('valid_before'):.1f} -> {pct('valid_after'):.1f} % "
          f"(+{gained} / -{lost}); molecule stability {pct('stable_before'):.1f} -> {pct('stable_after'):.1f} %; "
          f"errors {sum(r['error'] is not None for r in rows)}; converged {pct('converged'):.0f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
