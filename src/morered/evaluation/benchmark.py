"""The relaxation benchmark: every method on the same inputs in one run, scored and reported."""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from morered.evaluation.baselines import BASELINES, RelaxResult, available, omp_threads
from morered.evaluation.inputs import KINDS, Structures, make_inputs, qm9_references, read_user_inputs
from morered.evaluation.report import write_report
from morered.evaluation.rmsd import heavy_atoms, is_failure, kabsch_rmsd, rmsd_ratio

#: MoreRed variants, run through :func:`morered.sampling.api.relax`
MORERED = ("jt", "as", "itp")
METHODS = ("identity", "mmff", "xtb") + MORERED
#: default number of QM9 test molecules (see :func:`run_relax_benchmark`)
DEFAULT_N = 50
#: default number of them that also get ``normal_mode`` inputs (6n GFN2-xTB force calls each)
DEFAULT_N_NORMAL_MODE = 50
#: relative tolerance of the failure test (ratio > 1 + FAILURE_TOL): rounding is not a failure
FAILURE_TOL = 1e-6


def score(numbers, x_in, ref, x_out, failure_tol: float = FAILURE_TOL) -> dict:
    """RMSDs (all atoms and heavy atoms, Kabsch), ratio and failure of one relaxation.

    ``x_out = None`` (the method failed) gives ``rmsd = ratio = inf`` and a failure; a failure
    is ``ratio > 1 + failure_tol``.
    """
    heavy = heavy_atoms(numbers)
    r = {"rmsd_in": kabsch_rmsd(x_in, ref), "rmsd_heavy_in": kabsch_rmsd(x_in, ref, heavy)}
    if x_out is None or not np.isfinite(x_out).all():
        r["rmsd"] = r["rmsd_heavy"] = math.inf
    else:
        r["rmsd"] = kabsch_rmsd(x_out, ref)
        r["rmsd_heavy"] = kabsch_rmsd(x_out, ref, heavy)
    r["ratio"] = rmsd_ratio(r["rmsd"], r["rmsd_in"])
    r["failure"] = is_failure(r["ratio"], failure_tol)
    return r


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _morered_relax(variants, model):
    """``(relax, {variant: model to pass}, {variant: reason skipped})``.

    The model of each variant is loaded once up front (``morered.sampling.api.resolve_model``),
    so that a missing model file or a model without the heads a variant needs makes the variant
    *skipped*, not a column of failures; the loaded model is then reused for every input kind.
    """
    try:
        from morered.sampling import api
    except Exception as e:  # ImportError, or an error while importing the sampler
        why = f"morered.sampling.api not importable: {type(e).__name__}: {e}"
        return None, {}, {v: why for v in variants}
    models, skipped = {}, {}
    resolve = getattr(api, "resolve_model", None)
    for v in variants:
        if resolve is None:
            models[v] = model
            continue
        try:
            models[v] = resolve(model, v)
        except Exception as e:  # missing model file, wrong heads...
            skipped[v] = f"no usable model: {type(e).__name__}: {e}"
    return api.relax, models, skipped


def _run_baseline(method, inputs: Structures, refs: Structures, valid, max_steps, fmax, progress):
    fn = BASELINES[method]
    opts = {"fmax": fmax} if method == "xtb" else {}
    it = valid
    if progress:
        from tqdm import tqdm

        it = tqdm(valid, desc=f"{method}/{inputs.kind}", leave=False, file=sys.stderr)
    t0 = time.perf_counter()
    results = [fn(inputs.numbers[k], inputs.positions[k], refs.positions[k], max_steps, **opts) for k in it]
    wall = time.perf_counter() - t0
    threads = omp_threads() if method == "xtb" else 1
    return results, wall, threads


def _run_morered(relax, variant, inputs: Structures, valid, model, max_steps, seed, batch_size):
    import torch

    atoms = [inputs.atoms(k) for k in valid]
    t0 = time.perf_counter()
    try:
        out = relax(atoms, model=model, variant=variant, max_steps=max_steps, seed=seed,
                    batch_size=batch_size, trajectory=False)  # trajectory_t comes anyway
        out = list(out)
        if len(out) != len(atoms):
            raise RuntimeError(f"relax returned {len(out)} results for {len(atoms)} structures")
        error = None
    except Exception as e:  # the whole batch failed: every structure is a failure
        out, error = [None] * len(atoms), f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    results = []
    for o in out:
        if o is None:
            results.append(({"error": error}, RelaxResult(None, 0, False, 0.0, error)))
            continue
        x = None if getattr(o, "positions", None) is None else np.asarray(o.positions, np.float64)
        extra = {"t0": getattr(o, "t0", None), "t_final": getattr(o, "t_final", None),
                 "trajectory_t": getattr(o, "trajectory_t", None)}
        err = getattr(o, "error", None)
        results.append((extra, RelaxResult(x if err is None else None, int(getattr(o, "steps", 0) or 0),
                                           bool(getattr(o, "converged", False)), 0.0, err)))
    return results, wall, torch.get_num_threads()


def _energy_rows(rows, refs_by_kind, outputs, dft: int, xtb: bool, progress: bool) -> None:
    """Add ``dE_xtb`` (every structure) and ``dE_dft`` (first ``dft`` references) in kcal/mol.

    A failed relaxation gets ΔE = inf; an energy that cannot be computed (SCF failure) NaN.
    Both count as "not within 1 kcal/mol".
    """
    from morered.evaluation.energies import EV_TO_KCAL, HARTREE_TO_KCAL, dft_energy, xtb_energy

    def safe(fn, z, x):
        try:
            return fn(z, x)
        except Exception:  # e.g. SCF not converged
            return math.nan

    ref_energy: dict = {}  # (level, reference id) -> energy; one reference serves every kind

    def de(level, fn, scale, r, z, ref, x, e_out=None):
        key = (level, str(r["mol_id"]))
        if key not in ref_energy:
            ref_energy[key] = safe(fn, z, ref)
        if x is None:
            return math.inf
        e = e_out if e_out is not None else safe(fn, z, x)
        return (e - ref_energy[key]) * scale

    dft_ids = None
    if dft > 0:
        first = next(iter(refs_by_kind.values()))
        dft_ids = {str(i) for i in list(first.ids)[:dft]}
    for r, x in zip(rows, outputs):
        refs = refs_by_kind[r["kind"]]
        z, ref = refs.numbers[r["index"]], refs.positions[r["index"]]
        if xtb:
            r["dE_xtb"] = de("xtb", xtb_energy, EV_TO_KCAL, r, z, ref, x, r.get("_energy_xtb"))
        if dft_ids is not None and str(r["mol_id"]) in dft_ids:
            _log(progress, f"DFT single point: {r['method']}/{r['kind']} #{r['mol_id']}")
            r["dE_dft"] = de("dft", dft_energy, HARTREE_TO_KCAL, r, z, ref, x)


def run_relax_benchmark(
    n: int = DEFAULT_N,
    out: str | os.PathLike = "runs/benchmark_relax",
    seed: int = 0,
    methods=("identity", "mmff", "xtb", "jt", "as", "itp"),
    kinds=("diffused_50", "diffused_100", "diffused_150", "normal_mode", "mmff_min", "xtb_min"),
    max_steps: int = 1000,
    dft: int = 0,
    xtb_energy: bool = False,
    inputs: str | os.PathLike | None = None,
    refs: str | os.PathLike | None = None,
    model=None,
    progress: bool = True,
    *,
    n_normal_mode: int | None = DEFAULT_N_NORMAL_MODE,
    temperature: float = 300.0,
    fmax: float = 0.005,
    batch_size: int = 128,
    id_field: str = "id",
    cache: bool = True,
) -> dict:
    """Relax the same inputs with every method and write a report (SPEC §7, paper Fig. 4).

    Inputs are QM9 test molecules chosen by ``seed`` (a prefix of one permutation of the fixed
    test split), perturbed by each kind of :mod:`morered.evaluation.inputs` and cached on disk;
    or, with ``inputs`` and ``refs``, the user's own files matched by ``id_field`` (one kind,
    ``user``; ``kinds`` and ``n`` are ignored).  Every method gets the same ``max_steps``.  A
    method whose tool is missing is skipped and listed as such; a structure a method fails on is
    a failure (ratio inf), never dropped.  Inputs a generator could not make (e.g. MMFF94 cannot
    type the molecule for ``mmff_min``) are listed in the report and not relaxed.

    Default size: ``n = 50`` molecules, all six kinds.  Measured on 2 cores shared with two
    training runs: inputs ~1.5 min the first time (normal-mode Hessians ~1-2 s per molecule,
    xtb minima ~0.2 s), cached afterwards; identity ~0 s, MMFF94 ~5 ms and GFN2-xTB ~0.1-0.5 s per
    structure, so the baselines take ~2 min for the 300 inputs; the rest of the ~10 minutes is
    left for the three MoreRed variants (300 structures each, batched).  ``n = 1000`` is a full
    run (normal-mode inputs alone ~30 min; cap them with ``n_normal_mode``).

    Args:
        n: number of QM9 test molecules.
        out: folder for ``results.csv``, ``summary.md``, ``summary.json`` and PNG plots.
        seed: chooses the molecules and seeds the inputs and the stochastic MoreRed samplers.
        methods: any of ``identity``, ``mmff`` (RDKit MMFF94, bonds from the reference),
            ``xtb`` (GFN2-xTB, tblite + ASE L-BFGS), ``jt``, ``as``, ``itp`` (MoreRed variants
            through :func:`morered.sampling.api.relax`).
        kinds: any of ``diffused_<t>``, ``normal_mode``, ``mmff_min``, ``xtb_min``.
        max_steps: maximum iterations for every method.
        dft: number of molecules (the first ``dft`` references) whose reference and every
            result get a PySCF B3LYP/6-31G(2df,p) single point (about a minute each on 2 cores
            for a QM9 molecule, so ``dft × (1 + methods × kinds)`` minutes).
        xtb_energy: add GFN2-xTB ΔE for every structure (cheap).
        inputs, refs: the user's files (any ASE format, or SDF) instead of QM9.
        model: passed to the MoreRed sampler (None: its default model).
        progress: log progress to stderr.
        n_normal_mode: only the first this many molecules get ``normal_mode`` inputs (None: all).
        temperature: K, for ``normal_mode``.
        fmax: GFN2-xTB convergence, max force in eV/Å.
        batch_size: structures per MoreRed batch.
        id_field: the id field of the user's files.
        cache: read and write generated inputs under ``$MORERED_CACHE/benchmark_inputs``.
    Returns:
        ``{"rows": [...], "summary": [...], "files": {name: path}, "skipped": {method: reason},
        "missing_inputs": {kind: [...]}, "timings": {(method, kind): {...}}}``.
    """
    t_start = time.perf_counter()
    out = Path(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")

    # inputs -------------------------------------------------------------------------------
    inputs_by_kind: dict[str, Structures] = {}
    refs_by_kind: dict[str, Structures] = {}
    input_seconds: dict[str, float] = {}
    if inputs is not None or refs is not None:
        if inputs is None or refs is None:
            raise ValueError("give both inputs and refs, or neither")
        x, r = read_user_inputs(inputs, refs, id_field)
        inputs_by_kind["user"], refs_by_kind["user"] = x, r
        source = f"user files {inputs} / {refs} (id field {id_field!r})"
    else:
        all_refs = qm9_references(n, seed)
        source = f"QM9 test split, {n} molecules chosen by seed {seed}"
        for kind in kinds:
            r = all_refs
            if kind == "normal_mode" and n_normal_mode is not None and n_normal_mode < n:
                r = Structures(all_refs.ids[:n_normal_mode], all_refs.numbers[:n_normal_mode],
                               all_refs.positions[:n_normal_mode], kind="reference")
            _log(progress, f"inputs: {kind} for {len(r)} molecules")
            t0 = time.perf_counter()
            inputs_by_kind[kind] = make_inputs(kind, r, seed=seed, temperature=temperature, cache=cache)
            input_seconds[kind] = time.perf_counter() - t0
            refs_by_kind[kind] = r
    missing = {k: [f"{s.ids[i]}: {s.errors[i]}" for i in range(len(s)) if s.positions[i] is None]
               for k, s in inputs_by_kind.items()}
    missing = {k: v for k, v in missing.items() if v}

    # methods ------------------------------------------------------------------------------
    skipped: dict[str, str] = {}
    variants = [m for m in methods if m in MORERED]
    relax, models, skipped = _morered_relax(variants, model) if variants else (None, {}, {})
    for m in methods:
        if m not in MORERED:
            ok, why = available(m)
            if not ok:
                skipped[m] = why
    for m, why in skipped.items():
        _log(progress, f"skipped {m}: {why}")

    rows: list[dict] = []
    outputs: list[np.ndarray | None] = []
    timings: dict[tuple, dict] = {}
    for kind, x in inputs_by_kind.items():
        r = refs_by_kind[kind]
        valid = [k for k in range(len(x)) if x.positions[k] is not None]
        for m in methods:
            if m in skipped or not valid:
                continue
            if m in MORERED:
                res, wall, threads = _run_morered(relax, m, x, valid, models[m], max_steps, seed, batch_size)
            else:
                res0, wall, threads = _run_baseline(m, x, r, valid, max_steps, fmax, progress)
                res = [({}, rr) for rr in res0]
            timings[(m, kind)] = {"seconds": wall, "threads": threads}
            _log(progress, f"{m:>8s} / {kind:<14s} {len(valid)} structures in {wall:.1f} s "
                           f"({len(valid) / max(wall, 1e-9):.3g} structures/s, {threads} threads)")
            for k, (extra, rr) in zip(valid, res):
                row = {"method": m, "kind": kind, "mol_id": x.ids[k].item(), "index": k,
                       "n_atoms": len(x.numbers[k])}
                row.update(score(x.numbers[k], x.positions[k], r.positions[k], rr.positions))
                row.update(converged=rr.converged, steps=rr.steps,
                           seconds=wall / len(valid) if m in MORERED else rr.seconds,
                           threads=threads, error=rr.error or extra.get("error"))
                row.update({key: v for key, v in extra.items() if key != "error"})
                if rr.energy_xtb is not None:
                    row["_energy_xtb"] = rr.energy_xtb
                rows.append(row)
                outputs.append(rr.positions)

    # energies -----------------------------------------------------------------------------
    if dft > 0 or xtb_energy:
        t0 = time.perf_counter()
        _energy_rows(rows, refs_by_kind, outputs, dft, xtb_energy, progress)
        _log(progress, f"energies in {time.perf_counter() - t0:.1f} s")
    for row in rows:
        row.pop("_energy_xtb", None)

    # report -------------------------------------------------------------------------------
    import torch

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "inputs": source,
        "kinds": ", ".join(inputs_by_kind),
        "methods": ", ".join(methods),
        "max_steps": max_steps,
        "GFN2-xTB fmax (eV/Å)": fmax,
        "normal-mode temperature (K)": temperature,
        "seed": seed,
        "failure": f"ratio > 1 + {FAILURE_TOL:g} (the tolerance only absorbs rounding)",
        "threads": f"OpenMP {omp_threads()} (tblite), torch {torch.get_num_threads()}, RDKit 1; "
                   f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "input generation (s)": ", ".join(f"{k} {v:.1f}" for k, v in input_seconds.items()) or "–",
        "total wall time (s)": f"{time.perf_counter() - t_start:.1f}",
    }
    if dft:
        meta["DFT"] = f"PySCF B3LYP (b3lypg)/6-31G(2df,p), density fitting, first {dft} molecules"
    files = write_report(rows, out, meta, timings, skipped, missing)
    from morered.evaluation.report import summarize

    _log(progress, f"report in {out}: {', '.join(files)}")
    return {"rows": rows, "summary": summarize(rows, timings), "files": files, "skipped": skipped,
            "missing_inputs": missing, "timings": timings}
