"""`morered relax`: structures toward equilibrium by reverse diffusion."""

from __future__ import annotations

import sys

from morered.cli.common import EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED, add_model_flags, read_or_exit
from morered.sampling.samplers import (DEFAULT_JUMP, DEFAULT_PATIENCE, DEFAULT_T_CONV, DEFAULT_T_EQ, DEFAULT_TAIL_STEPS,
                                      DEFAULT_TAIL_T, STOP_REASONS)


def add_parser(sub):
    p = sub.add_parser("relax", help="relax structures by reverse diffusion",
                       description="Relax structures toward their equilibrium geometry. Exit code: 0 = every "
                       "structure was relaxed (converged or not: see the morered_converged field), 1 = some "
                       "structures were rejected or failed (listed in OUTPUT's .errors.csv), 2 = nothing "
                       "could be done (unreadable input, bad options).")
    p.add_argument("input", help="xyz, extxyz, ASE .db, .sdf, or any file ase.io reads")
    p.add_argument("-o", "--output", required=True, help="output file; format by extension")
    add_model_flags(p)
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
    p.add_argument("--tail-t", type=int, default=None, help="AS/JT: when the adaptive phase ends, continue on "
                   "the fixed deterministic schedule from this step to 0 (0: off; default: %d)" % DEFAULT_TAIL_T)
    p.add_argument("--tail-steps", type=int, default=None, help="AS/JT: DDIM jumps of that tail (0: one step at a "
                   "time; default: %d)" % DEFAULT_TAIL_STEPS)
    p.add_argument("--jump", type=float, default=None, help="AS/JT: from predicted step t jump to t (1 - JUMP) "
                   "with a deterministic DDIM step (0: DDPM steps t -> t-1; default: %g)" % DEFAULT_JUMP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory", metavar="DIR", help="write one extxyz trajectory per input to DIR")
    p.add_argument("--reference", metavar="FILE", help="reference geometries in the same order: print the "
                   "RMSD (Kabsch, all atoms) of each structure before and after relaxation")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _report_rmsd(reference, records, results) -> None:
    """Print RMSD to the reference before and after, per structure and as medians."""
    import numpy as np

    from morered.evaluation.rmsd import kabsch_rmsd

    refs = read_or_exit(reference)
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


def run(args) -> int:
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
    records = read_or_exit(args.input)
    if records is None:
        return EXIT_FATAL
    ok = [k for k, r in enumerate(records) if r.error is None]
    t0 = time.time()
    try:
        res = relax([records[k].atoms for k in ok], model, args.variant,
                    max_steps=args.max_steps, t_conv=DEFAULT_T_CONV if args.t_conv is None else args.t_conv,
                    t_start=args.t_start, stochastic=args.stochastic, batch_size=args.batch_size,
                    final_step=args.final_step, patience=args.patience, t_eq=args.t_eq,
                    tail_t=args.tail_t, tail_steps=args.tail_steps, jump=args.jump,
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
                      "morered_stop": r.stop,
                      "morered_t0": r.t0, "morered_t_final": r.t_final, "morered_variant": args.variant}
        if args.trajectory:
            from pathlib import Path

            Path(args.trajectory).mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in records[k].name)
            write_trajectory(Path(args.trajectory) / f"{k:05d}_{safe}.extxyz", records[k].atoms.numbers,
                             r.trajectory, r.frame_steps(), records[k].name)
    failed = write_structures(args.output, records, results)
    done = [r for r in res if r.error is None]
    stops = ", ".join(f"{sum(r.stop == s for r in done)} {s}" for s in STOP_REASONS[:-1])
    print(f"{len(records)} structures: {len(done)} relaxed ({stops}), median steps "
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
