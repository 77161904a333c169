"""`morered relax`: structures toward equilibrium by reverse diffusion."""

from __future__ import annotations

import sys

from morered.cli.common import (EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, Interruptible,
                                add_model_flags, check_output_dir, check_output_file, int_at_least,
                                nonneg_int, read_inputs)
from morered.errors import OptionError
from morered.sampling.samplers import (DEFAULT_JUMP, DEFAULT_PATIENCE, DEFAULT_T_CONV, DEFAULT_T_EQ, DEFAULT_TAIL_STEPS,
                                      DEFAULT_TAIL_T, STOP_REASONS)

#: structures relaxed per call of the sampler, in batches: Ctrl-C finishes the chunk in flight
CHUNK_BATCHES = 8


def add_parser(sub):
    p = sub.add_parser("relax", help="relax structures by reverse diffusion",
                       description="Relax structures toward their equilibrium geometry. Exit code: 0 = every "
                       "structure was relaxed (converged or not: see the morered_converged field), 1 = some "
                       "structures were rejected or failed (listed in OUTPUT's .errors.csv), 2 = nothing "
                       "could be done (unreadable input, bad options, model or output path), 130 = "
                       "interrupted (Ctrl-C/SIGTERM: the structures in flight are finished and written, the "
                       "rest listed in the errors file as not relaxed).", epilog=EXIT_CODES_HELP)
    p.add_argument("input", help="xyz, extxyz, ASE .db, .sdf, or any file ase.io reads")
    p.add_argument("-o", "--output", required=True, help="output file; format by extension (never the input)")
    add_model_flags(p)
    p.add_argument("--variant", choices=["jt", "as", "itp", "ddpm"], default="jt")
    p.add_argument("--max-steps", type=nonneg_int, default=1000)
    p.add_argument("--t-conv", type=nonneg_int, default=None, help="AS/JT convergence threshold (default: %d)"
                   % DEFAULT_T_CONV)
    p.add_argument("--patience", type=nonneg_int, default=DEFAULT_PATIENCE, help="AS/JT: also stop when the "
                   "predicted step has not reached a new minimum for this many steps; 0: off (default: %(default)s)")
    p.add_argument("--t-eq", type=int_at_least(-1), default=DEFAULT_T_EQ, help="AS/JT: an input whose first "
                   "predicted step is <= this is already at equilibrium (one mean step, then stop); -1: off "
                   "(default: %(default)s)")
    p.add_argument("--t-start", type=nonneg_int, help="ddpm only: the diffusion step the inputs are at")
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

    if len(reference) != len(records):
        print(f"warning: the reference has {len(reference)} structures, the input {len(records)}: no RMSD "
              "report", file=sys.stderr)
        return
    before, after = [], []
    print(f"{'structure':<24} {'RMSD before':>12} {'RMSD after':>11}  (Å, Kabsch, all atoms)")
    for rec, ref, res in zip(records, reference, results):
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
    from pathlib import Path

    import numpy as np

    from morered.io import check_output_format, errors_path, write_errors, write_structures, write_trajectory
    from morered.sampling.api import check_device, check_relax_options, relax, resolve_model

    # everything that can be refused is refused before any work is done
    t_conv = DEFAULT_T_CONV if args.t_conv is None else args.t_conv
    if args.variant == "ddpm" and args.t_start is None:
        raise OptionError("--variant ddpm needs --t-start (the diffusion step the inputs are at)")
    check_relax_options(variant=args.variant, max_steps=args.max_steps, t_conv=t_conv, patience=args.patience,
                        t_eq=args.t_eq, t_start=args.t_start, final_step=args.final_step,
                        batch_size=args.batch_size, max_atoms=args.max_atoms)
    inputs = [args.input] + ([args.reference] if args.reference else [])
    check_output_file(args.output, "-o", inputs)
    check_output_format(args.output)
    check_output_file(errors_path(args.output), "-o (its errors file)", inputs)
    if args.trajectory:
        check_output_dir(args.trajectory, "--trajectory")
    check_device(args.device)
    model = resolve_model(args.model, args.variant, args.device, args.time_model)
    check_relax_options(variant=args.variant, t_conv=t_conv, t_start=args.t_start, T=model.schedule.T)
    records = read_inputs(args.input)
    reference = read_inputs(args.reference) if args.reference else None

    ok = [k for k, r in enumerate(records) if r.error is None]
    results = [{"positions": None, "error": r.error} for r in records]
    done = []
    chunk = max(1, CHUNK_BATCHES * args.batch_size)
    t0 = time.time()
    interrupted = False
    bar = None
    if not args.no_progress:
        from morered.io import progress_bar

        bar = progress_bar(len(ok), f"relax ({args.variant})", "mol")
    try:
        with Interruptible("the structures in flight") as stop:
            for s in range(0, len(ok), chunk):
                if stop.requested:
                    break
                part = ok[s:s + chunk]
                res = relax([records[k].atoms for k in part], model, args.variant,
                            max_steps=args.max_steps, t_conv=t_conv, t_start=args.t_start,
                            stochastic=args.stochastic, batch_size=args.batch_size, final_step=args.final_step,
                            patience=args.patience, t_eq=args.t_eq, tail_t=args.tail_t, tail_steps=args.tail_steps,
                            jump=args.jump, seed=args.seed + s, device=args.device,
                            trajectory=bool(args.trajectory), max_atoms=args.max_atoms,
                            progress=bar.update if bar is not None else False)
                for k, r in zip(part, res):
                    if r.error is not None:
                        records[k].error = r.error
                        continue
                    done.append(r)
                    results[k] = {"positions": r.positions, "morered_steps": r.steps,
                                  "morered_converged": r.converged, "morered_t0": r.t0,
                                  "morered_t_final": r.t_final, "morered_variant": args.variant}
                    if r.stop is not None:
                        results[k]["morered_stop"] = r.stop
                    if args.trajectory:
                        Path(args.trajectory).mkdir(parents=True, exist_ok=True)
                        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in records[k].name)
                        write_trajectory(Path(args.trajectory) / f"{k:05d}_{safe}.extxyz", records[k].atoms.numbers,
                                         r.trajectory, r.frame_steps(), records[k].name)
            interrupted = stop.requested
    except KeyboardInterrupt:  # the second Ctrl-C: keep what is finished
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    if interrupted:
        for k in ok:
            if results[k]["positions"] is None and records[k].error is None:
                records[k].error = "not relaxed: the run was interrupted"
    wall = time.time() - t0
    failed = write_structures(args.output, records, results)
    write_errors(errors_path(args.output), failed)  # none: an earlier errors file is removed
    stops = ", ".join(f"{sum(r.stop == s for r in done)} {s}" for s in STOP_REASONS[:-1])
    target = args.output if done else "no output file (nothing relaxed)"
    print(f"{len(records)} structures: {len(done)} relaxed ({stops}), median steps "
          f"{float(np.median([r.steps for r in done])) if done else float('nan'):.0f}, "
          f"wall {wall:.1f} s, {len(done) / max(wall, 1e-9):.1f} structures/s -> {target}")
    if reference is not None:
        _report_rmsd(reference, records, results)
    if failed:
        ep = errors_path(args.output)
        print(f"{len(failed)} structures not relaxed, reasons in {ep}:", file=sys.stderr)
        for r in failed[:10]:
            print(f"  {r.name}: {r.error}", file=sys.stderr)
        if len(failed) > 10:
            print(f"  ... and {len(failed) - 10} more", file=sys.stderr)
    if interrupted:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if failed else EXIT_OK
