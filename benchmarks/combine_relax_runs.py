"""One table from several `morered benchmark relax` runs over the same inputs.

    python benchmarks/combine_relax_runs.py RUN_DIR [RUN_DIR ...] [--out FILE.md]

Runs that split the methods between processes (e.g. the slow per-structure SO3LR on one core, the
rest on the other) are joined here: the script refuses runs whose inputs differ (source, kinds,
seed, max_steps, fmax) and prints, per input kind, every method's median RMSD (Å, all atoms),
failure %, median ANI-1x / GFN2-xTB ΔE to the reference (kcal/mol, where screened), converged %,
and structures/s with the run it came from (timings compare within one run only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SAME = ("inputs", "kinds", "seed", "max_steps", "GFN2-xTB fmax (eV/Å)")


def load(run: Path) -> dict:
    d = json.loads((run / "summary.json").read_text())
    d["run"] = run.name
    return d


def combine(runs: list[dict]) -> str:
    first = runs[0]["meta"]
    for r in runs[1:]:
        for k in SAME:
            if str(r["meta"].get(k)) != str(first.get(k)):
                raise SystemExit(f"runs differ in {k!r}: {first.get(k)!r} vs {r['meta'].get(k)!r} ({r['run']})")
    rows = [(s, r["run"]) for r in runs for s in r["summary"]]
    kinds = [k.strip() for k in str(first["kinds"]).split(",")]
    lines = [f"Inputs: {first['inputs']}; max_steps {first['max_steps']}, fmax {first['GFN2-xTB fmax (eV/Å)']} eV/Å.",
             "", "| kind | method | n | errors | RMSD median (Å) | failure % | ΔE ANI-1x median | ΔE xTB median "
             "| converged % | structures/s | run |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    for kind in kinds:
        for s, run in rows:
            if s["kind"] != kind:
                continue
            lines.append(f"| {kind} | {s['method']} | {s['n']} | {s['n_error']} | {num(s.get('rmsd_median'), '.3f')} | "
                         f"{num(s.get('failure_pct'), '.0f')} | {num(s.get('dE_ani1x_median'), '+.2f')} | "
                         f"{num(s.get('dE_xtb_median'), '+.2f')} | {num(s.get('converged_pct'), '.0f')} | "
                         f"{num(s.get('structures_per_s'), '.3g')} | {run} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    md = combine([load(r) for r in a.runs])
    if a.out:
        a.out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
