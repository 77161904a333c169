"""The `morered` command line: train, relax, score, benchmark."""

from __future__ import annotations

import argparse
import logging
import sys

from morered.sampling.samplers import DEFAULT_PATIENCE, DEFAULT_T_CONV, DEFAULT_T_EQ


def _add_train(sub):
    p = sub.add_parser("train", help="train a diffusion (ddpm), time (time) or joint (jt) model")
    p.add_argument("--model", dest="model_type", choices=["jt", "ddpm", "time"], help="what to train (default: jt)")
    p.add_argument("--config", help="YAML file overriding the packaged defaults")
    p.add_argument("--out", required=True, help="folder for checkpoints, logs and the exported model")
    p.add_argument("--data", help="own equilibrium structures (xyz, extxyz, ASE db, sdf, ...) instead of QM9")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--max-time", help="wall-time budget, e.g. 50m, 2h, 1:30:00")
    p.add_argument("--limit-train", type=int, help="train on the first N training molecules")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--devices", help="devices per node (DDP when > 1)")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--accelerator", choices=["cpu", "gpu", "cuda", "mps", "auto"])
    p.add_argument("--precision", help="32-true (default), bf16-mixed, 16-mixed")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set optim.lr=5e-4 (repeatable)")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from morered.training.config import load_config
    from morered.training.train import train

    flags = {
        "model_type": args.model_type, "data.source": args.data, "trainer.max_steps": args.max_steps,
        "trainer.max_time": args.max_time, "data.limit_train": args.limit_train, "seed": args.seed,
        "data.batch_size": args.batch_size, "trainer.devices": _int_or_str(args.devices),
        "trainer.num_nodes": args.num_nodes, "trainer.accelerator": args.accelerator,
        "trainer.precision": args.precision, "trainer.threads": args.threads,
    }
    from morered.training.config import parse_override

    overrides = dict(parse_override(s) for s in args.set)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(args.config, overrides)
    path = train(cfg, args.out)
    print(f"model written to {path}")
    return 0


def _int_or_str(v):
    if v is None:
        return None
    return int(v) if str(v).isdigit() else v


# ---------------------------------------------------------------------------- relax / score
EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2


def _add_model_flags(p):
    p.add_argument("--model", help="model file (.pt/.ckpt) or shipped name (jt, ddpm); default: the "
                   "shipped model of the variant")
    p.add_argument("--time-model", help="separate time predictor paired with a noise-only --model (AS/ITP)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-atoms", type=int, help="largest structure accepted (default: twice the largest "
                   "training molecule, 58 atoms for the shipped QM9 models)")


def _add_relax(sub):
    p = sub.add_parser("relax", help="relax structures by reverse diffusion",
                       description="Relax structures toward their equilibrium geometry. Exit code: 0 = every "
                       "structure was relaxed (converged or not: see the morered_converged field), 1 = some "
                       "structures were rejected or failed (listed in OUTPUT's .errors.csv), 2 = nothing "
                       "could be done (unreadable input, bad options).")
    p.add_argument("input", help="xyz, extxyz, ASE .db, .sdf, or any file ase.io reads")
    p.add_argument("-o", "--output", required=True, help="output file; format by extension")
    _add_model_flags(p)
    p.add_argument("--variant", choices=["jt", "as", "itp", "ddpm"], default="jt")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--t-conv", type=int, default=None, help="AS/JT convergence threshold (default: %d)" % DEFAULT_T_CONV)
    p.add_argument("--patience", type=int, default=DEFAULT_PATIENCE, help="AS/JT: also stop when the "
                   "predicted step has not reached a new minimum for this many steps; 0: off (default: %(default)s)")
    p.add_argument("--t-eq", type=int, default=DEFAULT_T_EQ, help="AS/JT: an input whose first predicted step "
                   "is <= this is already at equilibrium (one mean step, then stop); -1: off (default: %(default)s)")
    p.add_argument("--t-start", type=int, help="ddpm only: the diffusion step the inputs are at")
    p.add_argument("--stochastic", action="store_true", help="add posterior noise at every step")
    p.add_argument("--final-step", choices=["mean", "x0"], help="AS/JT on convergence: one last reverse step "
                   "(mean) or a jump to the clean structure the noise prediction implies (x0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory", metavar="DIR", help="write one extxyz trajectory per input to DIR")
    p.add_argument("--reference", metavar="FILE", help="reference geometries in the same order: print the "
                   "RMSD (Kabsch, all atoms) of each structure before and after relaxation")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_relax)


def _report_rmsd(reference, records, results) -> None:
    """Print RMSD to the reference before and after, per structure and as medians."""
    import numpy as np

    from morered.evaluation.rmsd import kabsch_rmsd

    refs = _read_or_exit(reference)
    if refs is None:
        return
    if len(refs) != len(records):
        print(f"warning: {reference} has {len(refs)} structures, the input {len(records)}: no RMSD report",
              file=sys.stderr)
        return
    before, after = [], []
    print(f"{'structure':<24} {'RMSD before':>12} {'RMSD after':>11}  (Å, Kabsch, all atoms)")
    for rec, ref, res in zip(records, refs, results):
        if res["positions"] is None or ref.atoms is None or list(ref.atoms.numbers) != list(rec.atoms.numbers):
            continue
        b = kabsch_rmsd(rec.atoms.positions, ref.atoms.positions)
        a = kabsch_rmsd(res["positions"], ref.atoms.positions)
        before.append(b)
        after.append(a)
        print(f"{rec.name:<24} {b:12.3f} {a:11.3f}")
    if before:
        print(f"{'median':<24} {np.median(before):12.3f} {np.median(after):11.3f}   "
              f"({sum(x < y for x, y in zip(after, before))}/{len(before)} closer to the reference)")


def _read_or_exit(path):
    from morered.io import StructureReadError, read_structures

    try:
        return read_structures(path)
    except StructureReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _relax(args) -> int:
    import time

    import numpy as np

    from morered.io import check_output_format, errors_path, write_errors, write_structures, write_trajectory
    from morered.sampling.api import relax, resolve_model

    if args.variant == "ddpm" and args.t_start is None:
        print("error: --variant ddpm needs --t-start", file=sys.stderr)
        return EXIT_FATAL
    try:  # everything that can be refused is refused before any work is done
        check_output_format(args.output)
        model = resolve_model(args.model, args.variant, args.device, args.time_model)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FATAL
    records = _read_or_exit(args.input)
    if records is None:
        return EXIT_FATAL
    ok = [k for k, r in enumerate(records) if r.error is None]
    t0 = time.time()
    try:
        res = relax([records[k].atoms for k in ok], model, args.variant,
                    max_steps=args.max_steps, t_conv=DEFAULT_T_CONV if args.t_conv is None else args.t_conv,
                    t_start=args.t_start, stochastic=args.stochastic, batch_size=args.batch_size,
                    final_step=args.final_step, patience=args.patience, t_eq=args.t_eq,
                    seed=args.seed, device=args.device, trajectory=bool(args.trajectory),
                    max_atoms=args.max_atoms, progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FATAL
    wall = time.time() - t0
    results = [{"positions": None, "error": r.error} for r in records]
    for k, r in zip(ok, res):
        if r.error is not None:
            records[k].error = r.error
            continue
        results[k] = {"positions": r.positions, "morered_steps": r.steps, "morered_converged": r.converged,
                      "morered_t0": r.t0, "morered_t_final": r.t_final, "morered_variant": args.variant}
        if args.trajectory:
            from pathlib import Path

            Path(args.trajectory).mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in records[k].name)
            write_trajectory(Path(args.trajectory) / f"{k:05d}_{safe}.extxyz", records[k].atoms.numbers,
                             r.trajectory, r.frame_steps(), records[k].name)
    failed = write_structures(args.output, records, results)
    done = [r for r in res if r.error is None]
    n_conv = sum(r.converged for r in done)
    print(f"{len(records)} structures: {len(done)} relaxed, {n_conv} converged "
          f"({100 * n_conv / max(1, len(done)):.1f} %), median steps "
          f"{float(np.median([r.steps for r in done])) if done else float('nan'):.0f}, "
          f"wall {wall:.1f} s, {len(done) / max(wall, 1e-9):.1f} structures/s -> {args.output}")
    if args.reference:
        _report_rmsd(args.reference, records, results)
    if failed:
        ep = errors_path(args.output)
        write_errors(ep, failed)
        print(f"{len(failed)} structures not relaxed, reasons in {ep}:", file=sys.stderr)
        for r in failed[:10]:
            print(f"  {r.name}: {r.error}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _add_score(sub):
    p = sub.add_parser("score", help="predicted diffusion step of each structure (distance from equilibrium)",
                       description="Print the predicted diffusion step t (0..T) of each structure and the RMSD "
                       "of a Gaussian displacement with that noise level. t near 0: at (the model's idea of) "
                       "equilibrium; the score is meaningful for molecules like the training data and "
                       "displacements up to ~1 A RMSD; beyond that (t > ~500) it saturates and only says 'far'.")
    p.add_argument("input")
    p.add_argument("-o", "--output", help="CSV file (default: print to stdout)")
    _add_model_flags(p)
    p.set_defaults(func=_score)


def _score(args) -> int:
    import csv
    import math

    from morered.io import validate
    from morered.sampling.api import load_time_model, score

    records = _read_or_exit(args.input)
    if records is None:
        return EXIT_FATAL
    try:
        lm = load_time_model(args.time_model or args.model or "jt", args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FATAL
    limit = args.max_atoms or 2 * lm.max_atoms
    for r in records:
        if r.error is None:
            r.error = validate(r.atoms, elements=lm.elements, max_atoms=limit)
    ok = [k for k, r in enumerate(records) if r.error is None]
    s = score([records[k].atoms for k in ok], lm, batch_size=args.batch_size, device=args.device,
              max_atoms=limit) if ok else []
    t_of = dict(zip(ok, s))
    rows = []
    ab = lm.schedule.alpha_bar
    for k, r in enumerate(records):
        reason = r.error
        t = t_of.get(k, float("nan"))
        if reason is not None or not math.isfinite(t):
            rows.append({"index": k, "name": r.name, "t": "", "rmsd_equiv": "", "error": reason or "not scored"})
        else:
            rows.append({"index": k, "name": r.name, "t": f"{t:.1f}",
                         "rmsd_equiv": f"{math.sqrt(3 * (1 - float(ab[round(t)]))):.3f}", "error": ""})
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    w = csv.DictWriter(out, fieldnames=["index", "name", "t", "rmsd_equiv", "error"])
    w.writeheader()
    w.writerows(rows)
    if args.output:
        out.close()
    bad = [r for r in rows if r["error"]]
    for r in bad:
        print(f"error: {r['name']}: {r['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if bad else EXIT_OK


# ---------------------------------------------------------------------------- benchmarks
def _add_benchmark(sub):
    p = sub.add_parser("benchmark", aliases=["bench"], help="benchmarks: training speed, relaxation quality")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    t = bsub.add_parser("train", help="training and inference molecules/s on QM9 batches")
    t.add_argument("--config", help="YAML config (default: the packaged defaults, 128 features)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--batches", type=int, default=10)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.set_defaults(func=_bench_train)
    _add_benchmark_relax(bsub)


def _bench_train(args) -> int:
    import torch

    from morered.training.bench import bench_train
    from morered.training.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    r = bench_train(cfg, args.batch_size, args.batches, device=args.device)
    rep = cfg["model"]["representation"]
    print(f"model {cfg['model_type']}: PaiNN {rep['n_features']} features x {rep['n_interactions']} blocks, "
          f"{r['parameters']} parameters; batches of {args.batch_size} QM9 molecules "
          f"({r['atoms_per_batch']:.0f} atoms), device {args.device}, {r['threads']} threads")
    print(f"training : {r['train_mol_s']:8.1f} molecules/s")
    print(f"inference: {r['infer_mol_s']:8.1f} molecules/s")
    return 0


def _add_benchmark_relax(bsub):
    try:
        from morered.evaluation.benchmark import add_cli_arguments
    except ImportError:  # pragma: no cover - the evaluation extra is part of the package
        return
    p = bsub.add_parser("relax", help="MoreRed vs MMFF94 vs GFN2-xTB on QM9 test molecules (paper Fig. 4)")
    add_cli_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="morered", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_relax(sub)
    _add_score(sub)
    _add_benchmark(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
