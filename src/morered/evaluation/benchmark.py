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

from morered.evaluation.baselines import BASELINES, BaselineResult, available, omp_threads
from morered.evaluation.geometry import geometry_errors
from morered.evaluation.inputs import (KINDS_HELP, Structures, input_settings, is_kind, make_inputs, qm7x_inputs,
                                      qm9_references, read_user_inputs)
from morered.evaluation.peers import BATCHED as BATCHED_PEERS, OPTIMIZERS as PEER_OPTIMIZERS, PEERS, RELAX as PEER_RELAX
from morered.evaluation.peers import peer_available, relax_batched
from morered.evaluation.report import summarize, write_report
from morered.evaluation.rmsd import heavy_atoms, is_failure, kabsch_rmsd, rmsd_ratio
from morered.sampling.api import relax, resolve_model

#: MoreRed variants, run through :func:`morered.sampling.api.relax`
MORERED = ("jt", "as", "itp")
#: ML force fields (``peers``): ASE L-BFGS with the GFN2-xTB baseline's max_steps and fmax
METHODS = ("identity", "mmff", "xtb") + MORERED + PEERS
DEFAULT_METHODS = ("identity", "mmff", "xtb", "jt", "as", "itp")
DEFAULT_KINDS = ("diffused_50", "diffused_100", "diffused_150", "normal_mode", "mmff_min", "xtb_min")
#: default number of QM9 test molecules (see :func:`run_relax_benchmark`)
DEFAULT_N = 50
#: default number of them that also get ``normal_mode`` inputs (6n GFN2-xTB force calls each);
#: None: all of them (at the default n the Hessians cost ~1 min, once, then they are cached)
DEFAULT_N_NORMAL_MODE = None
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


def _morered_models(variants, model, time_model):
    """``({variant: loaded model}, {variant: reason skipped})``.

    The model of each variant is loaded once up front, so that a missing model file or a model
    unsuitable for a variant (e.g. AS without separate time and noise networks) makes the variant
    *skipped*, not a column of failures; the loaded model is then reused for every input kind.
    """
    models, skipped = {}, {}
    for v in variants:
        try:
            models[v] = resolve_model(model, v, time_model=time_model)
        except (OSError, ValueError) as e:  # missing model file, wrong heads...
            skipped[v] = f"no usable model: {type(e).__name__}: {e}"
    return models, skipped


def _run_baseline(method, inputs: Structures, refs: Structures, valid, max_steps, fmax, progress):
    if method in BATCHED_PEERS:  # all structures at once, ASE's L-BFGS steps (peers.relax_batched)
        t0 = time.perf_counter()
        results = relax_batched(method, [inputs.numbers[k] for k in valid], [inputs.positions[k] for k in valid],
                                max_steps, fmax, progress=progress)
        return results, time.perf_counter() - t0, 1
    fn = BASELINES[method] if method in BASELINES else PEER_RELAX[method]
    opts = {"fmax": fmax} if method == "xtb" or method in PEERS else {}
    it = valid
    if progress:
        from tqdm import tqdm

        it = tqdm(valid, desc=f"{method}/{inputs.kind}", leave=False, file=sys.stderr)
    t0 = time.perf_counter()
    results = [fn(inputs.numbers[k], inputs.positions[k], refs.positions[k], max_steps, **opts) for k in it]
    wall = time.perf_counter() - t0
    threads = omp_threads() if method == "xtb" else 1
    return results, wall, threads


def _run_morered(variant, inputs: Structures, valid, model, max_steps, seed, batch_size):
    import torch

    atoms = [inputs.atoms(k) for k in valid]
    t0 = time.perf_counter()
    out = relax(atoms, model=model, variant=variant, max_steps=max_steps, seed=seed,
                batch_size=batch_size, trajectory=False)  # trajectory_t comes anyway
    wall = time.perf_counter() - t0
    results = []
    for o in out:  # a structure relax rejected or failed on carries its error: a failure
        extra = {"t0": o.t0, "t_final": o.t_final, "trajectory_t": o.trajectory_t}
        x = None if o.error is not None or o.positions is None else np.asarray(o.positions, np.float64)
        results.append((extra, BaselineResult(x, o.steps, o.converged, 0.0, o.error)))
    return results, wall, torch.get_num_threads()


def _benchmark_inputs(n, seed, kinds, inputs, refs, id_field, n_normal_mode, temperature, cache, progress,
                      data_dir=None):
    """``({kind: inputs}, {kind: references}, {kind: seconds to make them}, description)``."""
    inputs_by_kind: dict[str, Structures] = {}
    refs_by_kind: dict[str, Structures] = {}
    input_seconds: dict[str, float] = {}
    if data_dir is not None:  # QM7-X: its own displaced structures, no generated kinds
        t0 = time.perf_counter()
        inputs_by_kind, r = qm7x_inputs(data_dir, n, seed)
        refs_by_kind = {k: r for k in inputs_by_kind}
        input_seconds["qm7x"] = time.perf_counter() - t0
        return inputs_by_kind, refs_by_kind, input_seconds, (
            f"QM7-X test graphs in {data_dir}, {len(r)} references chosen by seed {seed}, closest / middle / "
            "farthest displaced structure by RMSD")
    if inputs is not None or refs is not None:
        if inputs is None or refs is None:
            raise ValueError("give both inputs and refs, or neither")
        x, r = read_user_inputs(inputs, refs, id_field)
        inputs_by_kind["user"], refs_by_kind["user"] = x, r
        return inputs_by_kind, refs_by_kind, input_seconds, f"user files {inputs} / {refs} (id field {id_field!r})"
    all_refs = qm9_references(n, seed)
    for kind in kinds:
        r = all_refs
        if kind.startswith("normal_mode") and n_normal_mode is not None and n_normal_mode < n:
            r = Structures(all_refs.ids[:n_normal_mode], all_refs.numbers[:n_normal_mode],
                           all_refs.positions[:n_normal_mode], kind="reference")
        _log(progress, f"inputs: {kind} for {len(r)} molecules")
        t0 = time.perf_counter()
        inputs_by_kind[kind] = make_inputs(kind, r, seed=seed, temperature=temperature, cache=cache)
        input_seconds[kind] = time.perf_counter() - t0
        refs_by_kind[kind] = r
    return inputs_by_kind, refs_by_kind, input_seconds, f"QM9 test split, {n} molecules chosen by seed {seed}"


def _relax_all(methods, skipped, inputs_by_kind, refs_by_kind, models, max_steps, fmax, seed,
               batch_size, progress):
    """Run every method on every kind; ``(rows, relaxed positions per row, timings)``."""
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
                res, wall, threads = _run_morered(m, x, valid, models[m], max_steps, seed, batch_size)
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
                row.update(geometry_errors(x.numbers[k], r.positions[k], rr.positions))
                row.update(converged=rr.converged, steps=rr.steps,
                           seconds=wall / len(valid) if m in MORERED else rr.seconds,
                           threads=threads, error=rr.error)
                row.update(extra)
                if rr.energy_xtb is not None:
                    row["_energy_xtb"] = rr.energy_xtb
                rows.append(row)
                outputs.append(rr.positions)
    return rows, outputs, timings


def _energy_rows(rows, refs_by_kind, outputs, dft: int, xtb: bool, progress: bool, screens=(),
                 dft_cache=None) -> None:
    """Add ΔE = E(result) − E(reference) in kcal/mol to the rows.

    ``dE_xtb`` (GFN2-xTB) and ``dE_<screen>`` (ANI, batched) for every structure, ``dE_dft`` for
    the structures of the first ``dft`` references, its single points through ``dft_cache`` (an
    :class:`~morered.evaluation.energies.EnergyCache`) with a progress bar over those not cached.
    A failed relaxation gets ΔE = inf; an energy that cannot be computed (SCF failure, element
    ANI does not know) NaN.  Both count as "not within 1 kcal/mol".
    """
    from morered.evaluation import energies as E

    def ref_of(r):
        refs = refs_by_kind[r["kind"]]
        return refs.numbers[r["index"]], refs.positions[r["index"]]

    def usable(x):
        return x is not None and np.isfinite(x).all()

    refs = {}  # reference id -> (numbers, positions); one reference serves every kind
    for r in rows:
        refs.setdefault(str(r["mol_id"]), ref_of(r))

    if xtb:
        def safe_xtb(z, x):
            try:
                return E.xtb_energy(z, x)
            except Exception:  # e.g. SCF not converged
                return math.nan

        e_ref = {i: safe_xtb(*zx) for i, zx in refs.items()}
        for r, x in zip(rows, outputs):
            e = r["_energy_xtb"] if r.get("_energy_xtb") is not None else (safe_xtb(ref_of(r)[0], x) if usable(x) else None)
            r["dE_xtb"] = math.inf if not usable(x) else (e - e_ref[str(r["mol_id"])]) * E.EV_TO_KCAL

    for name in screens:
        t0 = time.perf_counter()
        ids = list(refs)
        e_ref = dict(zip(ids, E.ani_energies([refs[i][0] for i in ids], [refs[i][1] for i in ids], name)))
        e_out = E.ani_energies([ref_of(r)[0] for r in rows], [x if usable(x) else None for x in outputs], name)
        for r, x, e in zip(rows, outputs, e_out):
            r[f"dE_{name}"] = math.inf if not usable(x) else (e - e_ref[str(r["mol_id"])]) * E.HARTREE_TO_KCAL
        _log(progress, f"{name} screen: {len(rows) + len(ids)} single points in {time.perf_counter() - t0:.1f} s")

    if dft > 0:
        first = next(iter(refs_by_kind.values()))
        dft_ids = [str(i) for i in list(first.ids)[:dft]]
        wanted = set(dft_ids)
        chosen = [(r, x) for r, x in zip(rows, outputs) if str(r["mol_id"]) in wanted]
        jobs = [(*refs[i], {"mol_id": i, "what": "reference"}) for i in dft_ids if i in refs]
        jobs += [(ref_of(r)[0], x, {"mol_id": str(r["mol_id"]), "what": f"{r['method']}/{r['kind']}"})
                 for r, x in chosen if usable(x)]
        cache = dft_cache if dft_cache is not None else E.EnergyCache()
        energy = E.cached_energies(jobs, lambda z, x: E.dft_energy(z, x), cache, E.DFT_SETTINGS, progress,
                                   "DFT single points")
        _log(progress, f"DFT: {cache.last.get('computed', 0)} single points computed, "
                       f"{cache.last.get('reused', 0)} from the cache{f' {cache.path}' if cache.path else ''}")
        for r, x in chosen:
            z, ref = refs[str(r["mol_id"])]
            e_ref = energy[E.geometry_key(z, ref, E.DFT_SETTINGS)]
            r["dE_dft"] = math.inf if not usable(x) else (energy[E.geometry_key(z, x, E.DFT_SETTINGS)] - e_ref) * E.HARTREE_TO_KCAL


def run_relax_benchmark(
    n: int = DEFAULT_N,
    out: str | os.PathLike = "runs/benchmark_relax",
    seed: int = 0,
    methods=DEFAULT_METHODS,
    kinds=DEFAULT_KINDS,
    max_steps: int = 1000,
    dft: int = 0,
    xtb_energy: bool = False,
    inputs: str | os.PathLike | None = None,
    refs: str | os.PathLike | None = None,
    model=None,
    progress: bool = True,
    *,
    time_model=None,
    n_normal_mode: int | None = DEFAULT_N_NORMAL_MODE,
    temperature: float = 300.0,
    fmax: float = 0.005,
    batch_size: int = 128,
    id_field: str = "id",
    cache: bool = True,
    dataset: str = "qm9",
    data_dir: str | os.PathLike | None = None,
    screens=(),
    dft_cache: str | os.PathLike | None = None,
) -> dict:
    """Relax the same inputs with every method and write a report (SPEC §7, paper Fig. 4).

    Inputs are QM9 test molecules chosen by ``seed`` (a prefix of one permutation of the fixed
    test split), perturbed by each kind of :mod:`morered.evaluation.inputs` and cached on disk;
    or, with ``inputs`` and ``refs``, the user's own files matched by ``id_field`` (one kind,
    ``user``; ``kinds`` and ``n`` are ignored).  Every method gets the same ``max_steps``.  A
    method whose tool is missing is skipped and listed as such; a structure a method fails on is
    a failure (ratio inf), never dropped.  Inputs a generator could not make (e.g. MMFF94 cannot
    type the molecule for ``mmff_min``) are listed in the report and not relaxed.

    Default size, ``n = 50`` molecules with all six kinds (300 inputs), chosen from timings on
    this 2-core machine (measured while two training runs shared it, which made everything about
    2-3x slower than on an idle machine; idle numbers in brackets):

    - inputs, once (then cached): diffused ~0 s; normal_mode 6n GFN2-xTB force calls per molecule,
      ~1.2 s for 18 atoms [idle]; xtb_min ~0.3 s; mmff_min ~5 ms.  n = 20 took 34 s contended.
    - identity ~0; MMFF94 4-7 ms per structure; GFN2-xTB 0.85-1.1 s per structure contended
      [0.1-0.3 s idle], ~0 on xtb_min inputs (already converged).  All baselines on n = 20 x 6
      kinds: 96 s contended.
    - MoreRed: one forward pass of the shipped-size JT network (PaiNN 96 features, 3 blocks) costs
      ~7 ms per molecule contended on 1 thread, so ~70 reverse steps per structure give ~0.5 s per
      structure and variant (AS evaluates two networks per step).

    Estimated total for n = 50: ~7-8 min idle (inputs ~1.5 min, baselines ~1.5 min, three MoreRed
    variants ~4 min), about twice that while training runs share the cores.  MoreRed's steps per
    structure depend on the model (its time head decides when to stop), so re-measure once a
    final model ships.  ``n = 1000`` is a full run (normal-mode inputs alone ~20 min; cap them with
    ``n_normal_mode``).

    Args:
        n: number of QM9 test molecules.
        out: folder for ``results.csv``, ``summary.md``, ``summary.json`` and PNG plots.
        seed: chooses the molecules and seeds the inputs and the stochastic MoreRed samplers.
        methods: any of ``identity``, ``mmff`` (RDKit MMFF94, bonds from the reference),
            ``xtb`` (GFN2-xTB, tblite + ASE L-BFGS), ``jt``, ``as``, ``itp`` (MoreRed variants
            through :func:`morered.sampling.api.relax`).
        kinds: any of ``diffused_<t>``, ``normal_mode`` (at ``temperature``), ``normal_mode_<T>``
            (T in K, e.g. ``normal_mode_1500`` as QM7-X), ``mmff_min``, ``xtb_min``, ``etkdg``
            (RDKit ETKDGv3 embedding from the reference's bond graph).
        max_steps: maximum iterations for every method.
        dft: number of molecules (the first ``dft`` references) whose reference and every
            result get a PySCF B3LYP/6-31G(2df,p) single point (about a minute each on 2 cores
            for a QM9 molecule, so up to ``dft × (1 + methods × kinds)`` minutes, less what the
            cache already holds).
        xtb_energy: add GFN2-xTB ΔE for every structure (cheap).
        screens: cheap energies for every structure, any of ``ani1x``, ``ani1ccx`` (torchani 2.0,
            batched: seconds for hundreds of structures); the report says how well each tracks
            the DFT ΔE where both exist.
        dft_cache: JSONL file of DFT single points keyed by geometry (read, and appended to as each
            one finishes); None: ``$MORERED_CACHE/dft_cache.jsonl`` if ``cache``, else memory only.
        inputs, refs: the user's files (any ASE format, or SDF) instead of QM9.
        model: the MoreRed model, passed to :func:`morered.sampling.api.resolve_model` (None:
            the shipped model of each variant).  A variant it does not suit is skipped.
        time_model: a separate time predictor paired with ``model`` (needed for AS with a noise
            model; a JT model alone is skipped for AS).
        progress: log progress to stderr.
        n_normal_mode: only the first this many molecules get ``normal_mode`` inputs (None: all).
        temperature: K, for ``normal_mode``.
        fmax: GFN2-xTB convergence, max force in eV/Å.
        batch_size: structures per MoreRed batch.
        id_field: the id field of the user's files.
        cache: read and write generated inputs under ``$MORERED_CACHE/benchmark_inputs`` (and
            use the default DFT cache, see ``dft_cache``).
        dataset, data_dir: ``qm7x`` with the folder of its HDF5 files: the inputs are QM7-X's own
            displaced structures of ``n`` test references (kinds ``qm7x_closest``, ``qm7x_middle``,
            ``qm7x_farthest``; ``kinds`` is ignored), as in the paper.
    Returns:
        ``{"rows": [...], "summary": [...], "files": {name: path}, "skipped": {method: reason},
        "missing_inputs": {kind: [...]}, "timings": {(method, kind): {...}}}``.
    """
    t_start = time.perf_counter()
    out = Path(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    if dataset not in ("qm9", "qm7x") or (dataset == "qm7x") != (data_dir is not None):
        raise ValueError("dataset must be qm9, or qm7x together with data_dir")
    if dataset == "qm7x" and (inputs is not None or refs is not None):
        raise ValueError("give either the QM7-X data_dir or your own inputs and refs, not both")
    if inputs is None and refs is None and dataset == "qm9":
        for kind in kinds:
            input_settings(kind)  # unknown kinds fail here, before any work
    from morered.evaluation.energies import EnergyCache, default_dft_cache_path, screen_available

    for name in screens:
        ok, why = screen_available(name)
        if not ok:
            raise ImportError(f"energy screen {why}")
    if dft_cache is None and cache and dft > 0:
        dft_cache = default_dft_cache_path()
    dft_store = EnergyCache(dft_cache) if dft > 0 else None

    # inputs -------------------------------------------------------------------------------
    inputs_by_kind, refs_by_kind, input_seconds, source = _benchmark_inputs(
        n, seed, kinds, inputs, refs, id_field, n_normal_mode, temperature, cache, progress,
        data_dir if dataset == "qm7x" else None)
    missing = {k: [f"{s.ids[i]}: {s.errors[i]}" for i in range(len(s)) if s.positions[i] is None]
               for k, s in inputs_by_kind.items()}
    missing = {k: v for k, v in missing.items() if v}

    # methods ------------------------------------------------------------------------------
    variants = [m for m in methods if m in MORERED]
    models, skipped = _morered_models(variants, model, time_model)
    for m in methods:
        if m not in MORERED:
            ok, why = peer_available(m) if m in PEERS else available(m)
            if not ok:
                skipped[m] = why
    for m, why in skipped.items():
        _log(progress, f"skipped {m}: {why}")

    rows, outputs, timings = _relax_all(methods, skipped, inputs_by_kind, refs_by_kind, models,
                                        max_steps, fmax, seed, batch_size, progress)

    # energies -----------------------------------------------------------------------------
    if dft > 0 or xtb_energy or screens:
        t0 = time.perf_counter()
        _energy_rows(rows, refs_by_kind, outputs, dft, xtb_energy, progress, screens, dft_store)
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
        "normal_mode temperature (K)": f"{temperature:g} (normal_mode_<T> kinds name their own)",
        "seed": seed,
        "failure": f"ratio > 1 + {FAILURE_TOL:g} (the tolerance only absorbs rounding)",
        "threads": f"OpenMP {omp_threads()} (tblite), torch {torch.get_num_threads()}, RDKit 1; "
                   f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "input generation (s)": ", ".join(f"{k} {v:.1f}" for k, v in input_seconds.items()) or "–",
        "total wall time (s)": f"{time.perf_counter() - t_start:.1f}",
    }
    if dft:
        last = dft_store.last
        meta["DFT"] = (f"PySCF B3LYP (b3lypg)/6-31G(2df,p), density fitting, first {dft} molecules; "
                       f"{last.get('computed', 0)} single points computed, {last.get('reused', 0)} reused from "
                       f"{dft_store.path or 'memory'}")
    if screens:
        meta["energy screens"] = ", ".join(screens)
    peers_run = [m for m in methods if m in PEERS and m not in skipped]
    if peers_run:
        meta["ML force-field optimizers"] = "; ".join(f"{m}: {PEER_OPTIMIZERS[m]}" for m in peers_run) + (
            f" (fmax {fmax} eV/Å, max_steps {max_steps}, as GFN2-xTB)")
    meta["bond graph"] = "from the reference by covalent radii (d < 1.2 (r_i + r_j), ASE radii)"
    files = write_report(rows, out, meta, timings, skipped, missing)
    _log(progress, f"report in {out}: {', '.join(files)}")
    return {"rows": rows, "summary": summarize(rows, timings), "files": files, "skipped": skipped,
            "missing_inputs": missing, "timings": timings}


# ---------------------------------------------------------------------------- command line


def _csv_list(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def add_cli_arguments(p) -> None:
    """Options of ``morered benchmark relax`` on an argparse (sub)parser; sets ``func``."""
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"QM9 test molecules (default {DEFAULT_N}, ~10 min on 2 cores; 1000 = full run)")
    p.add_argument("--out", default="runs/benchmark_relax", help="report folder")
    p.add_argument("--seed", type=int, default=0, help="chooses molecules, seeds inputs and samplers")
    p.add_argument("--methods", type=_csv_list, default=DEFAULT_METHODS, help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--kinds", type=_csv_list, default=DEFAULT_KINDS,
                   help=f"comma-separated input kinds: {KINDS_HELP} (default {','.join(DEFAULT_KINDS)})")
    p.add_argument("--max-steps", type=int, default=1000, help="maximum iterations, every method")
    p.add_argument("--dft", type=int, default=0, metavar="N", help="PySCF B3LYP/6-31G(2df,p) ΔE on the first N molecules (~1 min per single point; cached, see --dft-cache)")
    p.add_argument("--dft-cache", metavar="FILE",
                   help="JSONL file of DFT single points by geometry hash, read and appended to as each finishes "
                        "(default $MORERED_CACHE/dft_cache.jsonl; put it beside committed results to resume for free)")
    p.add_argument("--xtb-energy", action="store_true", help="GFN2-xTB ΔE for every structure")
    p.add_argument("--screen", type=_csv_list, default=(), metavar="ani1x[,ani1ccx]",
                   help="cheap ΔE for every structure with torchani 2.0 (batched, seconds; pip install -e .[peers]); "
                        "the report shows how well it tracks the DFT ΔE")
    p.add_argument("--inputs", help="your own inputs (any ASE format or SDF), with --refs")
    p.add_argument("--refs", help="references for --inputs, matched by --id-field")
    p.add_argument("--dataset", choices=["qm9", "qm7x"], default="qm9",
                   help="qm7x: QM7-X's own displaced structures (closest/middle/farthest) of --n test references")
    p.add_argument("--data-dir", help="qm7x: folder of the official QM7-X HDF5 files")
    p.add_argument("--id-field", default="id", help="atoms.info key / SDF property holding the id (default: id; else name or index)")
    p.add_argument("--model", help="MoreRed model (.pt/.ckpt or shipped name; default: the shipped ones)")
    p.add_argument("--time-model", help="separate time predictor paired with --model (e.g. for AS)")
    p.add_argument("--temperature", type=float, default=300.0, help="normal_mode temperature, K")
    p.add_argument("--n-normal-mode", type=int, help="only the first N molecules get normal_mode inputs")
    p.add_argument("--fmax", type=float, default=0.005, help="GFN2-xTB convergence, eV/Å")
    p.add_argument("--batch-size", type=int, default=128, help="MoreRed structures per batch")
    p.add_argument("--threads", type=int, help="torch threads (tblite follows OMP_NUM_THREADS)")
    p.add_argument("--no-cache", action="store_true",
                   help="regenerate inputs instead of using the cache (and no default DFT cache; --dft-cache still works)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cli_run)


def check_cli_args(args) -> None:
    """Every option of ``benchmark relax`` checked before any work: OptionError (exit 2) naming it."""
    from morered.errors import OptionError

    ranges = [("n", args.n, 1), ("max_steps", args.max_steps, 0), ("dft", args.dft, 0),
              ("batch_size", args.batch_size, 1), ("threads", args.threads, 1), ("n_normal_mode", args.n_normal_mode, 0)]
    for name, value, lo in ranges:
        if value is not None and value < lo:
            raise OptionError(f"--{name.replace('_', '-')} must be >= {lo}, not {value}")
    for name, value in (("temperature", args.temperature), ("fmax", args.fmax)):
        if not (value > 0 and value < float("inf")):
            raise OptionError(f"--{name} must be a positive number, not {value}")
    if not args.methods:
        raise OptionError(f"--methods: give at least one of {','.join(METHODS)}")
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        raise OptionError(f"--methods: unknown {', '.join(bad)} (choose from {','.join(METHODS)})")
    if not args.kinds:
        raise OptionError("--kinds: give at least one input kind")
    bad = [k for k in args.kinds if not is_kind(k)]
    if bad:
        raise OptionError(f"--kinds: unknown {', '.join(bad)} ({KINDS_HELP})")
    from morered.evaluation.energies import SCREENS, screen_available

    for name in args.screen:
        if name not in SCREENS:
            raise OptionError(f"--screen: unknown {name} (choose from {','.join(SCREENS)})")
        ok, why = screen_available(name)
        if not ok:
            raise OptionError(f"--screen {name}: {why}")
    if args.dft_cache is not None:
        p = Path(args.dft_cache)
        if p.is_dir():
            raise OptionError(f"--dft-cache {p} is a directory, not a file")
        existing = p if p.exists() else p.parent
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            raise OptionError(f"--dft-cache {p}: cannot write to {existing}")
    if (args.inputs is None) != (args.refs is None):
        raise OptionError("--inputs and --refs go together: give both or neither")
    for opt, path in (("--inputs", args.inputs), ("--refs", args.refs)):
        if path is None:
            continue
        p = Path(path)
        if p.is_dir():
            raise OptionError(f"{opt} {p} is a directory, not a structure file")
        if not p.is_file():
            raise OptionError(f"{opt} {p}: no such file")
        if not os.access(p, os.R_OK):
            raise OptionError(f"{opt} {p}: permission denied")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file, not a folder")
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"--out {out}: cannot write to {existing}")


def _cli_run(args) -> int:
    check_cli_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = run_relax_benchmark(
        n=args.n, out=args.out, seed=args.seed, methods=args.methods, kinds=args.kinds,
        max_steps=args.max_steps, dft=args.dft, xtb_energy=args.xtb_energy, inputs=args.inputs,
        refs=args.refs, model=args.model, time_model=args.time_model, progress=not args.quiet, n_normal_mode=args.n_normal_mode,
        temperature=args.temperature, fmax=args.fmax, batch_size=args.batch_size, id_field=args.id_field,
        cache=not args.no_cache, dataset=args.dataset, data_dir=args.data_dir, screens=args.screen,
        dft_cache=args.dft_cache,
    )
    print(Path(res["files"]["summary.md"]).read_text())
    return 0
