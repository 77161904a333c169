"""`morered benchmark speed`: MoreRed-JT against RDKit MMFF94 and GFN2-xTB + L-BFGS, in one run.

Every method relaxes the same QM9 test inputs (diffused to t = 100, and GFN2-xTB minima) in the
same process, one after the other, so that the machine's load affects them alike.  MoreRed-JT runs
at every setting worth comparing (PaiNN kernel, torch threads, batch size, stopping rule); each row
gives structures/s, seconds per structure, the speed ratio to MMFF94 and to GFN2-xTB, and the
accuracy (median RMSD to the DFT geometry, failure %) so that no speed-up hides an accuracy loss.
A torch profile of one relaxation shows where the time goes.

``--large N`` adds a large-input row: N QM9 test + validation molecules diffused to t = 100
(repeated as needed) written to disk and relaxed by `morered relax` in its own process, streamed
disk to disk, with structures/s, wall time, peak RSS and the load average
(:mod:`morered.evaluation.stream_bench`).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

from morered.evaluation.baselines import BASELINES, available, omp_threads
from morered.evaluation.benchmark import score
from morered.evaluation.inputs import make_inputs, qm9_references

#: stopping rules compared: the current defaults and the rule of the first release
RULES = {
    "default": {},
    "legacy": {"patience": 50, "tail_t": 0, "tail_steps": 0, "jump": 0.0},
}
DEFAULT_KINDS = ("diffused_100", "xtb_min")


def _load():
    """(1-minute load average, cores): the numbers depend on it, so every report states it."""
    try:
        return round(os.getloadavg()[0], 2), os.cpu_count()
    except OSError:
        return None, os.cpu_count()


def _accuracy(inputs, refs, positions) -> dict:
    rows = [score(inputs.numbers[k], inputs.positions[k], refs.positions[k], x) for k, x in enumerate(positions)]
    rmsd = np.array([r["rmsd"] for r in rows])
    return {"median_rmsd": float(np.median(rmsd)), "failure_pct": float(100 * np.mean([r["failure"] for r in rows])),
            "input_median_rmsd": float(np.median([r["rmsd_in"] for r in rows]))}


def _run_jt(model, inputs, kernel: str, threads: int, batch_size: int, rule: str, max_steps: int) -> dict:
    import torch

    from morered.sampling.api import relax

    torch.set_num_threads(threads)
    model.model.kernel = kernel
    atoms = [inputs.atoms(k) for k in range(len(inputs))]
    relax(atoms[:min(8, len(atoms))], model, "jt", max_steps=2, batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    res = relax(atoms, model, "jt", max_steps=max_steps, batch_size=batch_size, **RULES[rule])
    wall = time.perf_counter() - t0
    return {"wall": wall, "positions": [r.positions for r in res],
            "mean_steps": float(np.mean([r.steps for r in res])),
            "stops": {s: sum(r.stop == s for r in res) for s in sorted({r.stop for r in res})}}


def _run_baseline(method, inputs, refs, max_steps: int, fmax: float) -> dict:
    fn = BASELINES[method]
    opts = {"fmax": fmax} if method == "xtb" else {}
    t0 = time.perf_counter()
    res = [fn(inputs.numbers[k], inputs.positions[k], refs.positions[k], max_steps, **opts) for k in range(len(inputs))]
    wall = time.perf_counter() - t0
    return {"wall": wall, "positions": [r.positions for r in res], "mean_steps": float(np.mean([r.steps for r in res])),
            "stops": {"converged": sum(r.converged for r in res), "error": sum(r.error is not None for r in res)}}


def profile_relaxation(model, inputs, n: int = 32, rows: int = 25) -> str:
    """Torch profiler table (self CPU time) of relaxing the first ``n`` inputs with the defaults."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from morered.sampling.api import relax

    atoms = [inputs.atoms(k) for k in range(min(n, len(inputs)))]
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("relax"):
            relax(atoms, model, "jt")
    wall = time.perf_counter() - t0
    head = (f"relax of {len(atoms)} structures ({inputs.kind}), defaults, kernel {model.model.kernel}, "
            f"{torch.get_num_threads()} thread(s), {wall:.2f} s under the profiler\n")
    return head + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run_speed_benchmark(n: int = 100, seed: int = 0, out="runs/benchmark_speed", kinds=DEFAULT_KINDS,
                        kernels=("dense", "edges"), threads=(1, 2), batch_sizes=(128,), rules=("default", "legacy"),
                        baselines=("mmff", "xtb"), model=None, max_steps: int = 1000, fmax: float = 0.005,
                        repeats: int = 2, profile: bool = True, progress: bool = True, large: int = 0,
                        large_max_steps: int | None = None) -> dict:
    """Run the speed comparison; write ``summary.md``, ``results.json`` and ``profile.txt`` to ``out``.

    ``large``: also relax that many structures streamed from disk to disk in a subprocess
    (:func:`morered.evaluation.stream_bench.large_input_row`, at most ``large_max_steps`` steps
    each, default: the default stopping rule); the row is ``results["large"]``. 0: off.
    ``kinds`` may be empty for the large row alone."""
    import torch

    from morered.sampling.api import resolve_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm = resolve_model(model, "jt")
    refs = qm9_references(n, seed)
    rows, start_load = [], _load()
    threads_before = torch.get_num_threads()

    def log(msg):
        if progress:
            print(msg, flush=True)

    for kind in kinds:
        log(f"inputs: {kind} for {n} QM9 test molecules")
        inputs = make_inputs(kind, refs, seed=seed)
        ok = [k for k in range(len(inputs)) if inputs.positions[k] is not None]
        if len(ok) < len(inputs):
            from morered.evaluation.inputs import Structures

            inputs = Structures(inputs.ids[ok], [inputs.numbers[k] for k in ok], [inputs.positions[k] for k in ok],
                                kind=inputs.kind)
            kind_refs = Structures(refs.ids[ok], [refs.numbers[k] for k in ok], [refs.positions[k] for k in ok])
        else:
            kind_refs = refs
        # every setting runs `repeats` times, round-robin, and keeps its fastest run: the machine's
        # load changes over minutes, and interleaving keeps it from favouring whichever ran first
        settings = [("baseline", m) for m in baselines if available(m)[0]]
        for m in baselines:
            if not available(m)[0]:
                log(f"  {m}: skipped ({available(m)[1]})")
        settings += [("jt", s) for s in itertools.product(kernels, threads, batch_sizes, rules)]
        best: dict = {}
        for rep in range(max(1, int(repeats))):
            for what, s in settings:
                if what == "baseline":
                    r = _run_baseline(s, inputs, kind_refs, max_steps, fmax)
                    r.update(method={"mmff": "MMFF94 (RDKit)", "xtb": "GFN2-xTB + L-BFGS"}.get(s, s),
                             setting=f"{omp_threads() if s == 'xtb' else 1} thread(s)")
                else:
                    kernel, nt, bs, rule = s
                    r = _run_jt(lm, inputs, kernel, nt, bs, rule, max_steps)
                    r.update(method="MoreRed-JT", setting=f"{kernel} kernel, {nt} thread(s), batch {bs}, {rule} rule",
                             kernel=kernel, threads=nt, batch_size=bs, rule=rule)
                r["load"] = _load()[0]
                log(f"  [{rep + 1}] {r['method']} {r['setting']:<44} {len(inputs) / r['wall']:8.2f} structures/s")
                key = (what, s)
                if key not in best or r["wall"] < best[key]["wall"]:
                    best[key] = r
        runs = [best[(what, s)] for what, s in settings]
        rate = {r["method"]: len(inputs) / r["wall"] for r in runs if r["method"] != "MoreRed-JT"}
        for r in runs:
            acc = _accuracy(inputs, kind_refs, r.pop("positions"))
            sps = len(inputs) / r["wall"]
            rows.append({"kind": kind, "n": len(inputs), **{k: v for k, v in r.items() if k != "wall"},
                         "structures_per_s": sps, "seconds_per_structure": r["wall"] / len(inputs),
                         "vs_mmff94": sps / rate["MMFF94 (RDKit)"] if "MMFF94 (RDKit)" in rate else None,
                         "vs_xtb": sps / rate["GFN2-xTB + L-BFGS"] if "GFN2-xTB + L-BFGS" in rate else None,
                         **acc})
    torch.set_num_threads(threads_before)
    large_row = None
    if large:
        from morered.evaluation.stream_bench import large_input_row

        log(f"large input: {large} structures streamed from disk to disk by `morered relax`")
        large_row = large_input_row(large, out / "large_input", model=model, max_steps=large_max_steps, seed=seed)
        log(f"  {large_row['structures_per_s']:.2f} structures/s, peak RSS {large_row['peak_rss_mib']:.0f} MiB")
    files = {}
    if profile and kinds:
        lm.model.kernel = "auto"
        inputs = make_inputs(kinds[0], refs, seed=seed)
        (out / "profile.txt").write_text(profile_relaxation(lm, inputs))
        files["profile.txt"] = str(out / "profile.txt")
    meta = {"n": n, "seed": seed, "cores": os.cpu_count(), "repeats": repeats, "load_at_start": start_load[0], "load_at_end": _load()[0],
            "omp_threads_xtb": omp_threads(), "max_steps": max_steps, "fmax": fmax, "rules": RULES,
            "model": str(model or "shipped jt"), "torch": torch.__version__}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "large": large_row}, indent=1))
    (out / "summary.md").write_text(summary_markdown(rows, meta, large_row))
    files.update({"results.json": str(out / "results.json"), "summary.md": str(out / "summary.md")})
    return {"rows": rows, "meta": meta, "files": files, "large": large_row}


def _x(v) -> str:
    return "-" if v is None else (f"{v:.1f}x" if v >= 0.095 else f"1/{1 / v:.0f}")


def summary_markdown(rows: list[dict], meta: dict, large: dict | None = None) -> str:
    lines = [f"# Relaxation speed: MoreRed-JT vs MMFF94 vs GFN2-xTB ({meta['n']} QM9 test molecules, seed "
             f"{meta['seed']})", "",
             f"{meta['cores']} cores; 1-minute load average {meta['load_at_start']} at the start, "
             f"{meta['load_at_end']} at the end (other work was running: compare rows within one run). "
             f"GFN2-xTB ran with {meta['omp_threads_xtb']} OpenMP thread(s), fmax {meta['fmax']} eV/Å; every method "
             f"at most {meta['max_steps']} steps. Each setting ran {meta.get('repeats', 1)} times, round-robin with the "
             f"others; the table keeps its fastest run. Rules: `default` = the shipped defaults, `legacy` = "
             f"{meta['rules']['legacy']}.", ""]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        g = [r for r in rows if r["kind"] == kind]
        lines += [f"## {kind} (input median RMSD {g[0]['input_median_rmsd']:.3f} Å, n = {g[0]['n']})", "",
                  "| method | setting | structures/s | s/structure | vs MMFF94 | vs GFN2-xTB | median RMSD (Å) | "
                  "failure % | mean steps | load |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in g:
            lines.append(f"| {r['method']} | {r['setting']} | {r['structures_per_s']:.2f} | "
                         f"{r['seconds_per_structure']:.4f} | {_x(r['vs_mmff94'])} | {_x(r['vs_xtb'])} | "
                         f"{r['median_rmsd']:.4f} | {r['failure_pct']:.0f} | {r['mean_steps']:.1f} | {r['load']} |")
        lines.append("")
    if large is not None:
        lines += large_markdown(large)
    return "\n".join(lines)


def large_markdown(r: dict) -> list[str]:
    """The large-input section of the summary (see :func:`stream_bench.large_input_row`)."""
    steps = "the default stopping rule" if r["max_steps"] is None else f"at most {r['max_steps']} step(s)"
    return [f"## Large input: {r['n']} structures streamed from disk to disk", "",
            f"QM9 test + validation molecules diffused to t = {r['t']}, repeated as needed ({r['input_mib']} MiB "
            f"extxyz), relaxed by `morered relax` in its own process with {steps} (its default threads and "
            "batch size). structures/s: as `morered relax` reports it (reading, relaxing, writing); process "
            "wall includes imports and model loading; peak RSS from wait4.", "",
            "| method | structures | structures/s | process wall (s) | structures/s (process) | peak RSS (MiB) | "
            "load before/after |", "|---|---:|---:|---:|---:|---:|---|",
            f"| MoreRed-JT, `morered relax` streamed | {r['n']} | {r['structures_per_s']:.2f} | {r['wall_s']:.1f} | "
            f"{r['rate_process']:.2f} | {r['peak_rss_mib']:.0f} | {r['load_before']} / {r['load_after']} |", "",
            f"Command: `{r['cmd']}`", ""]


def add_cli_arguments(p) -> None:
    from morered.cli.common import nonneg_int, positive_int

    def csv(cast=str):
        return lambda s: tuple(cast(x) for x in s.split(",") if x)

    p.add_argument("--n", type=positive_int, default=100, help="QM9 test molecules (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/benchmark_speed", help="report folder")
    p.add_argument("--kinds", type=csv(), default=DEFAULT_KINDS, help="input kinds (default diffused_100,xtb_min)")
    p.add_argument("--kernels", type=csv(), default=("dense", "edges"), help="PaiNN kernels (default dense,edges)")
    p.add_argument("--threads", type=csv(int), default=(1, 2), help="torch threads (default 1,2)")
    p.add_argument("--batch-sizes", type=csv(int), default=(128,), help="MoreRed pool sizes (default 128)")
    p.add_argument("--rules", type=csv(), default=("default", "legacy"), help=f"stopping rules from {sorted(RULES)}")
    p.add_argument("--baselines", type=csv(), default=("mmff", "xtb"), help="mmff, xtb")
    p.add_argument("--model", help="JT model (default: the shipped one)")
    p.add_argument("--max-steps", type=positive_int, default=1000)
    p.add_argument("--repeats", type=positive_int, default=2, help="runs of every setting, round-robin; the "
                   "fastest is kept (default 2)")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of one relaxation")
    p.add_argument("--large", type=nonneg_int, default=0, metavar="N", help="add a large-input row: N QM9 "
                   "test+validation molecules diffused to t=100 (repeated as needed) relaxed from disk to disk by "
                   "`morered relax` in a subprocess: structures/s, wall, peak RSS (default 0: off; the issue's "
                   "row is 100000)")
    p.add_argument("--large-max-steps", type=positive_int, default=None, metavar="K", help="cap the large-input "
                   "row at K steps per structure (default: the default stopping rule)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cli_run)


def _cli_run(args) -> int:
    from morered.errors import OptionError

    for name, values, allowed in (("--kernels", args.kernels, ("dense", "edges", "auto")),
                                  ("--rules", args.rules, tuple(RULES)), ("--baselines", args.baselines, tuple(BASELINES))):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise OptionError(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    if any(t < 1 for t in args.threads) or any(b < 1 for b in args.batch_sizes):
        raise OptionError("--threads and --batch-sizes must be positive")
    if not args.kinds and not args.large:
        raise OptionError("--kinds is empty and --large is 0: nothing to measure")
    res = run_speed_benchmark(n=args.n, seed=args.seed, out=args.out, kinds=args.kinds, kernels=args.kernels,
                              threads=args.threads, batch_sizes=args.batch_sizes, rules=args.rules,
                              baselines=args.baselines, model=args.model, max_steps=args.max_steps,
                              repeats=args.repeats, profile=not args.no_profile, progress=not args.quiet,
                              large=args.large, large_max_steps=args.large_max_steps)
    print(Path(res["files"]["summary.md"]).read_text())
    return 0
