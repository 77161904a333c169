"""How fast a force-field line's test errors fall with training steps (plain or DeNS), and what the targets cost.

    python benchmarks/forcefield_scaling.py [--line plain|dens] [--dir benchmarks/results/forcefield] [--from-steps 18943]
        [--steps-per-s 1.0] [--plot scaling.png] [--json scaling.json]

Reads the committed error files of the seed-0 line (``--line plain`` or ``dens``; stages 2-12: the
same labels, the same 50 eV/Å cap, batch 32, warm-started stage after stage; ``LINES`` below), takes the capped test row
(``max|F|<=50``: force MAE kcal/mol/Å per component, energy MAE kcal/mol), fits a power law
``MAE = a * steps^b`` on log-log axes over the stages from ``--from-steps`` on (the late, slower
part of the curve, so the extrapolation is not flattered by the fast early stages) and from the
first stage, and prints the steps at which each fit reaches the issue's targets (forces <= 1,
energies <= 0.5) with the CPU time that means at ``--steps-per-s``.  An extrapolation of a fitted
curve, not a measurement: it says the order of magnitude, not the day.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROW = "max|F|<=50"
TARGETS = {"force_mae_kcal_A": 1.0, "energy_mae_kcal": 0.5}
#: per line: (cumulative optimizer steps, error file, model key in it, what the stage was); seed 0
LINES = {
    "plain": [
        (6143, "errors_stage2_s0_6143.json", "runs/ff2_plain_s0/best.pt", "stage 2 (from scratch, 96 features)"),
        (12143, "errors_stage3_s0.json", "runs/ff3_plain_s0/best.pt", "stage 3 (+6,000, cosine 5e-4)"),
        (16143, "errors_stage4_s0.json", "runs/ff4_plain_s0/best.pt", "stage 4 (+4,000, cosine 3e-4)"),
        (18943, "errors_stage5_s0.json", "../../../runs/ff5_plain_s0/best.pt", "stage 5 (+2,800)"),
        (21943, "errors_stage6_s0.json", "runs/ff6_plain_s0/best.pt", "stage 6 (+3,000)"),
        (24943, "errors_stage7_s0.json", "weights/ff7_plain_s0_24943.pt", "stage 7 (+3,000)"),
        (27943, "errors_stage8_s0_wide128.json", "weights/ff8_wide128_s0_27943.pt", "stage 8 (+3,000, grown to 128)"),
        (30943, "errors_stage9_s0_wide128.json", "weights/ff9_wide128_s0_30943.pt", "stage 9 (+3,000, 128)"),
        (33443, "errors_stage10_s0_lr.json", "../../../runs/ff10_wide128_lr3e-4_s0/best.pt", "stage 10 (+2,500, 128)"),
        (35943, "errors_stage10_11_s0.json", "../../../runs/ff11_wide128_s0/best.pt", "stage 11 (+2,500, 128)"),
        (38443, "errors_stage11_12_s0.json", "../../../runs/ff12_wide128_s0/best.pt", "stage 12 (+2,500, 128)"),
    ],
    "dens": [
        (6143, "errors_stage2_s0_6143.json", "runs/ff2_dens_s0/best.pt", "stage 2 (from scratch, 96 features)"),
        (12143, "errors_stage3_s0.json", "runs/ff3_dens_s0/best.pt", "stage 3 (+6,000, cosine 5e-4)"),
        (16143, "errors_stage4_s0.json", "runs/ff4_dens_s0/best.pt", "stage 4 (+4,000, cosine 3e-4)"),
        (18943, "errors_stage5_s0.json", "../../../runs/ff5_dens_s0/best.pt", "stage 5 (+2,800)"),
        (21943, "errors_stage6_s0_dens.json", "runs/ff6_dens_s0/best.pt", "stage 6 (+3,000)"),
        (24943, "errors_stage7_s0_dens.json", "weights/ff7_dens_s0_24943.pt", "stage 7 (+3,000)"),
        (27943, "errors_stage8_s0_dens_wide128.json", "weights/ff8_dens_wide128_s0_27943.pt",
         "stage 8 (+3,000, grown to 128)"),
        (30943, "errors_stage9_s0_dens_wide128.json", "weights/ff9_dens_wide128_s0_30943.pt", "stage 9 (+3,000, 128)"),
        (33443, "errors_stage10_11_s0.json", "../../../runs/ff10_dens_wide128_s0/best.pt", "stage 10 (+2,500, 128)"),
        (35943, "errors_stage11_12_s0.json", "../../../runs/ff11_dens_wide128_s0/best.pt", "stage 11 (+2,500, 128)"),
        (38443, "errors_stage12_s0_dens.json", "../../../runs/ff12_dens_wide128_s0/best.pt", "stage 12 (+2,500, 128)"),
    ],
}


def load_points(folder: Path, line: str = "plain") -> list[dict]:
    """The stages of a line whose error file is present (a missing one is reported, not guessed)."""
    points = []
    for steps, name, key, what in LINES[line]:
        path = folder / name
        if not path.exists():
            print(f"skipped: {name} not found ({what})")
            continue
        row = json.loads(path.read_text())[key][ROW]
        points.append({"steps": steps, "stage": what, **{k: float(row[k]) for k in TARGETS}, "n": int(row["n"])})
    return points


def power_fit(steps, mae) -> tuple[float, float]:
    """``(a, b)`` of ``mae = a * steps^b`` by least squares on logs."""
    b, log_a = np.polyfit(np.log(steps), np.log(mae), 1)
    return float(np.exp(log_a)), float(b)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--line", choices=sorted(LINES), default="plain", help="plain or DeNS force fields")
    ap.add_argument("--dir", type=Path, default=Path(__file__).parent / "results" / "forcefield")
    ap.add_argument("--from-steps", type=int, default=18943, help="late fit: stages from this step count on")
    ap.add_argument("--steps-per-s", type=float, default=1.0,
                    help="training speed for the time estimate (batch 32, 128 features, 1 thread: ~1.0-1.1 here)")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    pts = load_points(args.dir, args.line)
    if len(pts) < 3:
        raise SystemExit(f"need at least 3 stages with error files, found {len(pts)}")
    steps = np.array([p["steps"] for p in pts], float)
    print(f"{'steps':>7} {'force MAE':>10} {'energy MAE':>11}  stage   (capped test row {ROW}, n = {pts[0]['n']})")
    for p in pts:
        print(f"{p['steps']:>7} {p['force_mae_kcal_A']:>10.3f} {p['energy_mae_kcal']:>11.3f}  {p['stage']}")
    fits = {}
    for metric, target in TARGETS.items():
        y = np.array([p[metric] for p in pts])
        for label, sel in (("all stages", steps > 0), (f"from {args.from_steps}", steps >= args.from_steps)):
            if sel.sum() < 3:
                continue
            a, b = power_fit(steps[sel], y[sel])
            need = (target / a) ** (1.0 / b) if b < 0 else float("inf")
            hours = need / args.steps_per_s / 3600
            fits[f"{metric} {label}"] = {"a": a, "b": b, "target": target, "steps_to_target": need,
                                         "cpu_hours_to_target": hours}
            print(f"{metric} ({label}): MAE ~ {a:.3g} * steps^{b:.3f}; target {target} at ~{need:.2g} steps "
                  f"(~{hours:.0f} h at {args.steps_per_s:g} steps/s; {need / steps[-1]:.0f}x the steps so far)")
    if args.plot is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        grid = np.geomspace(steps[0], 5e6, 100)
        for ax, (metric, target), name in zip(axes, TARGETS.items(), ("force MAE (kcal/mol/Å)", "energy MAE (kcal/mol)")):
            ax.loglog(steps, [p[metric] for p in pts], "o", label=f"{args.line}, seed 0 (capped test labels)")
            for label, style in (("all stages", ":"), (f"from {args.from_steps}", "--")):
                f = fits.get(f"{metric} {label}")
                if f:
                    ax.loglog(grid, f["a"] * grid ** f["b"], style, label=f"fit {label}: steps^{f['b']:.2f}")
            ax.axhline(target, color="k", lw=0.8)
            ax.text(grid[0], target * 1.05, f"target {target}", fontsize=8)
            ax.set_xlabel("optimizer steps (batch 32)")
            ax.set_ylabel(name)
            ax.legend(fontsize=7)
        fig.suptitle("PaiNN force field on GFN2-xTB labels: test error vs training steps (extrapolated)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
    result = {"line": args.line, "row": ROW, "points": pts, "fits": fits, "steps_per_s": args.steps_per_s}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
