"""Generation benchmark: DDPM's fixed schedule vs MoreRed-JT / -AS from the same compositions and
seeds (the paper's Table 1 and Figure 12), with the published numbers beside ours."""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from morered.generation.generate import (GENERATION_MAX_RESTARTS, GENERATION_RESTART_PATIENCE, GENERATION_RESTART_T,
                                         GENERATION_RETRIES, compositions_from_test, formula, generate)
from morered.generation.metrics import CHECKERS, check_molecules, summarize, training_smiles

#: published rows (SPEC §7 and §14): valid / valid+unique / valid+unique+novel %, and EDM's
#: atom / molecule stability; 10,000 samples with compositions from the QM9 test split
PUBLISHED = [
    ("MoreRed paper: DDPM", None, None, 78.2, 77.3, 62.5),
    ("MoreRed paper: MoreRed (adaptive)", None, None, 89.3, 88.0, 68.6),
    ("MoreRed paper: DDPM-large", None, None, 86.6, 85.3, 63.8),
    ("MoreRed paper: MoreRed-large", None, None, 94.7, 92.4, 66.7),
    ("EDM (Hoogeboom et al. 2022)", 98.7, 82.0, 91.9, 90.7, None),
    ("QM9 itself (EDM's tables)", 99.0, 95.2, 97.7, 97.7, None),
]

LABELS = {"ddpm": "DDPM (fixed schedule)", "jt": "MoreRed-JT (adaptive)", "as": "MoreRed-AS (adaptive)",
          "ddpm+relax": "DDPM, then relaxed by MoreRed-JT", "jt+relax": "MoreRed-JT, then relaxed (default)",
          "as+relax": "MoreRed-AS, then relaxed"}


def run_generation_benchmark(n: int, out: str | Path, *, variants: Sequence[str] = ("ddpm", "jt", "as"),
                             seed: int = 0, max_steps: int = 2000, sweep: Sequence[int] = (250, 500, 1000, 1500, 2000),
                             batch_size: int = 128, device: str = "cpu", n_plot: int = 6,
                             progress: bool = True, relax: bool = True, model=None,
                             train_smiles: set[str] | None = None, retries: int = GENERATION_RETRIES) -> dict:
    """Generate ``n`` molecules per variant from the same ``n`` test-split compositions and seed,
    score them, and write ``summary.md`` / ``summary.json`` / ``results.csv`` / the generated
    structures (``generated_<variant>.extxyz``) and two plots to ``out``.

    ``sweep``: for the adaptive variants, validity and uniqueness after that many iterations
    (snapshots of the same run, unrelaxed: a run with that ``max_steps`` differs only in its noise
    draws).  ``relax``: every variant gets two rows, as generated (``v``) and after the final
    relaxation (``v+relax``; the written structures are the relaxed ones).  ``model``: one model
    for every variant instead of the shipped ones; ``train_smiles``: the novelty reference
    (default: the QM9 training split's, cached).  ``retries``: fresh-noise runs of unconverged
    adaptive runs (generation's default rule); mean steps count every run (``Generated.steps_all``),
    the sweep's snapshots are the first runs'.
    """
    import ase.io
    from ase import Atoms

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    comps = compositions_from_test(n, seed)
    train = training_smiles() if train_smiles is None else train_smiles
    rows, summary, curves, sweeps = [], {}, {}, {}
    for v in variants:
        keep = [m for m in sweep if m <= max_steps] if v != "ddpm" else []
        t0 = time.time()
        gen = generate(comps, v, max_steps=max_steps, batch_size=batch_size, seed=seed, device=device,
                       progress=progress, snapshots=keep, relax=relax, model=model, retries=retries)
        wall = time.time() - t0
        nan = np.full((1, 3), np.nan)

        def score(pos):
            cs = check_molecules([(g.numbers, p if p is not None else nan) for g, p in zip(gen, pos)])
            return cs, {k: x for k, x in summarize(cs, train).to_dict().items() if k != "checkers"}

        common = {"mean_steps": float(np.mean([g.steps_all for g in gen])),
                  "converged": float(np.mean([g.converged for g in gen])),
                  "retried": float(np.mean([g.retries > 0 for g in gen])),
                  "failed": sum(g.error is not None for g in gen)}
        raw_checks, raw = score([g.unrelaxed if g.unrelaxed is not None else g.positions for g in gen])
        if relax:  # two rows from one run: as the reverse diffusion left them, and relaxed
            summary[v] = {**raw, **common, "wall_s": None, "molecules_per_s": None}
            checks, done = score([g.positions for g in gen])
            summary[f"{v}+relax"] = {**done, **common, "wall_s": wall, "molecules_per_s": n / wall,
                                     "mean_relax_steps": float(np.mean([g.relax_steps for g in gen])),
                                     "relax_refused": sum(g.relax_error is not None for g in gen)}
        else:
            checks = raw_checks
            summary[v] = {**raw, **common, "wall_s": wall, "molecules_per_s": n / wall}
        curves[v] = [g.trajectory_t for g in gen[:n_plot]]
        if keep:
            sweeps[v] = {}
            for s in keep:
                ms = summarize(check_molecules([(g.numbers, g.snapshots[s]) for g in gen if g.snapshots]), train)
                sweeps[v][s] = {"validity": ms.validity, "valid_unique": ms.valid_unique}
        frames = []
        for k, (g, c) in enumerate(zip(gen, checks)):
            rows.append({"variant": v, "index": k, "formula": formula(g.numbers), "valid": c.valid,
                         "valid_edm": c.valid_edm, "stable": c.stable, "smiles": c.smiles or "",
                         "valid_unrelaxed": raw_checks[k].valid, "stable_unrelaxed": raw_checks[k].stable,
                         "steps": g.steps, "steps_all": g.steps_all, "retries": g.retries,
                         "relax_steps": g.relax_steps, "converged": g.converged,
                         "t_final": g.t_final, "error": g.error or g.relax_error or ""})
            if g.positions is not None:
                a = Atoms(numbers=g.numbers, positions=g.positions)
                a.info.update(morered_valid=bool(c.valid), morered_steps=int(g.steps),
                              morered_relax_steps=int(g.relax_steps))
                if c.smiles:
                    a.info["morered_smiles"] = c.smiles
                frames.append(a)
        ase.io.write(out / f"generated_{v}.extxyz", frames, format="extxyz")
    meta = {"n": n, "seed": seed, "max_steps": max_steps, "batch_size": batch_size, "device": device, "relax": relax,
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "model": "shipped" if model is None else str(model), "checkers": CHECKERS,
            "restart": {"patience": GENERATION_RESTART_PATIENCE, "t": GENERATION_RESTART_T,
                        "max_restarts": GENERATION_MAX_RESTARTS}, "retries": retries}
    (out / "summary.json").write_text(json.dumps({"meta": meta, "results": summary, "sweep": sweeps}, indent=1))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.md").write_text(markdown_table(summary, meta))
    _plots(out, curves, sweeps, summary)
    return {"meta": meta, "results": summary, "sweep": sweeps}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}" if x <= 1.0 else f"{x:.1f}"


def markdown_table(summary: dict, meta: dict) -> str:
    """This run's rows beside the published ones."""
    lines = [f"# Generation from noise: {meta['n']} compositions from the QM9 test split (seed {meta['seed']})", "",
             (f"Model {meta['model']}" if meta.get("model", "shipped") != "shipped" else "Shipped models")
             + f"; max steps {meta['max_steps']} (adaptive), batch {meta['batch_size']}, "
             + (f"a hovering adaptive run re-noised to t = {meta['restart']['t']} after "
                f"{meta['restart']['patience']} steps without a new lowest step (at most "
                f"{meta['restart']['max_restarts']} times), " if meta.get("restart", {}).get("patience") else "")
             + (f"a run not converged within max steps run again from fresh noise (at most {meta['retries']} "
                "time(s); mean steps count every run), " if meta.get("retries") else "")
             + f"{meta['device']}, {meta['threads']} torch thread(s). Valid = RDKit-sanitisable and connected "
             "(EDM's bond tables); stability = EDM's; novelty against the QM9 training split. "
             "'then relaxed': the same run's structures after MoreRed's default relaxation rule "
             "(steps: generation + relaxation; molecules/s for both).", "",
             "| model | atom stab. % | mol. stab. % | valid % | valid+unique % | valid+unique+novel % | "
             "mean steps | molecules/s |",
             "|---|---|---|---|---|---|---|---|"]
    for v, r in summary.items():
        steps = f"{r['mean_steps']:.0f}" + (f" + {r['mean_relax_steps']:.0f}" if "mean_relax_steps" in r else "")
        speed = "–" if r.get("molecules_per_s") is None else f"{r['molecules_per_s']:.2f}"
        lines.append(f"| **this run: {LABELS.get(v, v)}** | {_pct(r['atom_stability'])} | "
                     f"{_pct(r['molecule_stability'])} | {_pct(r['validity'])} | {_pct(r['valid_unique'])} | "
                     f"{_pct(r['valid_unique_novel'])} | {steps} | {speed} |")
    for name, ast, mst, val, vu, vun in PUBLISHED:
        lines.append(f"| {name} | {_pct(ast and ast / 100) if ast else '–'} | {_pct(mst / 100) if mst else '–'} | "
                     f"{val:.1f} | {vu:.1f} | {vun if vun is not None else '–'} | – | – |")
    lines += ["", "Checkers:", ""] + [f"- `{k}`: {v}" for k, v in meta["checkers"].items()]
    return "\n".join(lines) + "\n"


def _plots(out: Path, curves: dict, sweeps: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"ddpm": ":", "jt": "-", "as": "--"}
    for v, ts in curves.items():
        for j, t in enumerate(ts):
            ax.plot(t, styles.get(v, "-"), lw=1, color=f"C{j}", label=LABELS.get(v, v) if j == 0 else None)
    _save(fig, ax, "iteration", "step used (predicted for JT/AS)", "Step over iterations (cf. paper Fig. 12 left)",
          out / "steps_over_iterations.png", legend_size=8)

    fig, ax = plt.subplots(figsize=(6, 4))
    for j, (v, s) in enumerate(sweeps.items()):
        xs = sorted(s)
        ax.plot(xs, [100 * s[x]["validity"] for x in xs], "o-", color=f"C{j}", label=f"{LABELS.get(v, v)}: valid")
        ax.plot(xs, [100 * s[x]["valid_unique"] for x in xs], "s--", color=f"C{j}", label=f"{LABELS.get(v, v)}: valid+unique")
    if "ddpm" in summary:
        ax.axhline(100 * summary["ddpm"]["validity"], color="k", ls=":", label="DDPM, 1000 fixed steps: valid")
    _save(fig, ax, "maximum number of steps", "%", "Validity against max steps (cf. paper Fig. 12 right)",
          out / "validity_vs_max_steps.png", legend_size=7)


def _save(fig, ax, xlabel, ylabel, title, path, legend_size=8) -> None:
    """Label, lay out, write and close one figure."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_cli_arguments(p) -> None:
    """Options of ``morered benchmark generate``."""
    p.add_argument("--n", type=int, default=100, help="compositions from the QM9 test split (default 100)")
    p.add_argument("--out", default="benchmarks/results/generate", help="output folder")
    p.add_argument("--variants", default="ddpm,jt,as", help="comma-separated, from ddpm, jt, as")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=2000, help="adaptive variants (default 2000)")
    p.add_argument("--sweep", default="250,500,1000,1500,2000", help="max-steps values for the validity curve")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-relax", action="store_true", help="score the structures as generated only")
    p.add_argument("--retries", type=int, default=GENERATION_RETRIES, help="adaptive variants: fresh-noise runs "
                   "of a run not converged within --max-steps (default %(default)s; 0: off)")
    p.add_argument("--model", help="model file for every variant instead of the shipped ones (e.g. a JT "
                   "checkpoint to compare with --variants jt)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from morered.errors import OptionError

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in LABELS]
    if bad or not variants:
        raise OptionError(f"--variants: unknown {bad}; choose from ddpm, jt, as")
    if args.n < 1:
        raise OptionError(f"--n {args.n}: need at least 1")
    if args.retries < 0:
        raise OptionError(f"--retries {args.retries}: must be 0 (off) or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    sweep = [int(s) for s in args.sweep.split(",") if s.strip()]
    run_generation_benchmark(args.n, args.out, variants=variants, seed=args.seed, max_steps=args.max_steps,
                                 sweep=sweep, batch_size=args.batch_size, device=args.device,
                                 progress=not args.no_progress, relax=not args.no_relax, model=args.model,
                                 retries=args.retries)
    print((Path(args.out) / "summary.md").read_text())
    return 0
