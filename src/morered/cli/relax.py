"""`morered relax`: structures toward equilibrium by reverse diffusion."""

from __future__ import annotations

import sys

from morered.cli.common import (EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, Interruptible,
                                add_model_flags, check_output_dir, check_output_file, int_at_least,
                                nonneg_int, positive_int, read_inputs)
from morered.errors import OptionError
from morered.sampling.samplers import (DEFAULT_EQ_TAIL_T, DEFAULT_JUMP, DEFAULT_TAIL_SCALE, DEFAULT_TAIL_T_MAX, DEFAULT_PATIENCE, DEFAULT_T_CONV, DEFAULT_T_EQ, DEFAULT_TAIL_STEPS,
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
    p.add_argument("--stochastic", action="store_true", help="add posterior noise at every step (AS/JT: "
                   "turns the deterministic DDIM jumps off; the final tail stays deterministic)")
    p.add_argument("--final-step", choices=["mean", "x0"], help="AS/JT on convergence: one last reverse step "
                   "(mean) or a jump to the clean structure the noise prediction implies (x0)")
    p.add_argument("--tail-t", type=int, default=None, help="AS/JT: when the adaptive phase ends, continue on "
                   "the fixed deterministic schedule from this step to 0 (0: off; default: %d)" % DEFAULT_TAIL_T)
    p.add_argument("--tail-steps", type=int, default=None, help="AS/JT: DDIM jumps of that tail (0: one step at a "
                   "time; default: %d)" % DEFAULT_TAIL_STEPS)
    p.add_argument("--tail-scale", type=float, default=None, help="AS/JT: start each molecule's tail at "
                   "TAIL_SCALE x its first predicted step, clamped to [--tail-t, --tail-t-max] (0: always from "
                   "--tail-t; default: %g)" % DEFAULT_TAIL_SCALE)
    p.add_argument("--tail-t-max", type=int, default=None, help="AS/JT: the latest tail start with --tail-scale "
                   "(default: %d)" % DEFAULT_TAIL_T_MAX)
    p.add_argument("--eq-tail-t", type=int, default=None, help="AS/JT: an input already at equilibrium (first "
                   "predicted step <= --t-eq) takes the fixed tail from this step instead of one mean step "
                   "(0: off; default: %d)" % DEFAULT_EQ_TAIL_T)
    p.add_argument("--jump", type=float, default=None, help="AS/JT: from predicted step t jump to t (1 - JUMP) "
                   "with a deterministic DDIM step (0: DDPM steps t -> t-1; default: %g)" % DEFAULT_JUMP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory", metavar="DIR", help="write one extxyz trajectory per input to DIR")
    p.add_argument("--reference", metavar="FILE", help="reference geometries in the same order: print the "
                   "RMSD (Kabsch, all atoms) of each structure before and after relaxation")
    p.add_argument("--no-progress", action="store_true")
    big = p.add_argument_group("large inputs", "the input is read lazily and the output appended a chunk at a "
                               "time (xyz/extxyz, SDF, ASE db): memory does not grow with the input. Under "
                               "torchrun (`torchrun --nproc_per_node N -m morered.cli relax IN -o OUT`) each "
                               "process relaxes shard RANK/N (with --device cuda on cuda:LOCAL_RANK) and rank 0 "
                               "merges them into -o, as --devices N does; --shard and --devices are refused there")
    big.add_argument("--resume", action="store_true", help="continue an interrupted run into the same -o: "
                     "the structures already in the output and errors file are skipped")
    big.add_argument("--shard", metavar="K/N", help="relax only the structures whose input index i has "
                     "i %% N == K (round-robin); join shard outputs with `morered merge`")
    big.add_argument("--devices", type=positive_int, default=None, metavar="N", help="run N worker processes (shards; "
                     "with --device cuda one GPU each, cuda:0..N-1) and merge their outputs into -o")
    big.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch threads per process "
                     "(default: 1 on a machine with <= 2 cores, where it was measured fastest; else torch's choice)")
    p.set_defaults(func=run, batch_size=None)


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
    from morered.cli import parallel

    world = parallel.torchrun_world()
    if world is not None:  # started by torchrun: every rank relaxes one shard, rank 0 merges
        return parallel.run_torchrun(args, *world)
    devices = check_args(args)
    if devices > 1:
        return parallel.run_devices(args, devices)
    summary, kept, reference = relax_shard(args)
    return report(summary, args.output, args.variant, kept, reference)


def _t_conv(args) -> int:
    return DEFAULT_T_CONV if args.t_conv is None else args.t_conv


def check_args(args, torchrun: bool = False) -> int:
    """Refuse bad options before any work is done (OptionError, exit 2); return the number of
    worker processes (``--devices``, else 1). ``torchrun``: the processes are torchrun's, so
    ``--shard`` and ``--devices`` are refused (each rank relaxes shard RANK/WORLD_SIZE)."""
    from morered.io import check_output_format, errors_path
    from morered.sampling import stream as st
    from morered.sampling.api import check_device, check_relax_options

    if args.variant == "ddpm" and args.t_start is None:
        raise OptionError("--variant ddpm needs --t-start (the diffusion step the inputs are at)")
    check_relax_options(variant=args.variant, max_steps=args.max_steps, t_conv=_t_conv(args), patience=args.patience,
                        t_eq=args.t_eq, t_start=args.t_start, final_step=args.final_step,
                        batch_size=args.batch_size or 1, max_atoms=args.max_atoms, tail_t=args.tail_t,
                        tail_steps=args.tail_steps, jump=args.jump, eq_tail_t=args.eq_tail_t,
                        tail_scale=args.tail_scale, tail_t_max=args.tail_t_max, stochastic=args.stochastic)
    if torchrun and (args.shard or args.devices is not None):
        raise OptionError("under torchrun every process relaxes shard RANK/WORLD_SIZE and rank 0 merges them "
                          "into -o: leave out --shard and --devices")
    if args.shard:
        st.parse_shard(args.shard)
    devices = _devices(args)
    if devices > 1 and args.shard:
        raise OptionError("--devices N runs N shards itself: give --shard or --devices, not both")
    if (devices > 1 or torchrun) and args.reference:
        raise OptionError("--reference needs one process: leave out --devices" + (" and torchrun" if torchrun else ""))
    inputs = [args.input] + ([args.reference] if args.reference else [])
    check_output_file(args.output, "-o", inputs)
    check_output_format(args.output)
    check_output_file(errors_path(args.output), "-o (its errors file)", inputs)
    if args.trajectory:
        check_output_dir(args.trajectory, "--trajectory")
    check_device(args.device)
    return devices


def relax_shard(args):
    """Relax ``args.input`` (its shard ``args.shard``, if given) into ``args.output`` in this
    process, with a progress bar unless ``args.no_progress``; the options are checked
    (:func:`check_args`). Returns (StreamSummary, kept records, reference records or None)."""
    from morered.io import StructureStream
    from morered.sampling import stream as st
    from morered.sampling.api import check_device, check_relax_options, resolve_model

    shard = st.parse_shard(args.shard) if args.shard else (0, 1)
    check_device(args.device)  # a worker's own device (cuda:K) may not exist
    _set_threads(args.threads, args.device)
    model = resolve_model(args.model, args.variant, args.device, args.time_model)
    t_conv = _t_conv(args)
    check_relax_options(variant=args.variant, t_conv=t_conv, t_start=args.t_start, T=model.schedule.T)
    StructureStream(args.input)  # unreadable file, unknown format: exit 2 before anything is written
    reference = read_inputs(args.reference) if args.reference else None
    batch_size = args.batch_size or st.auto_batch_size(args.device, st.mean_atoms(args.input))
    chunk = max(1, CHUNK_BATCHES * batch_size)
    kept: list = []
    bar = None
    if not args.no_progress:
        from morered.io import progress_bar

        # in a multi-process run only process 0 shows progress: its shard's, a 1/N sample of the whole
        where = f", shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""
        bar = progress_bar(None, f"relax ({args.variant}{where})", "mol", machine=True)

    def on_chunk(c):
        if bar is None:
            return
        counts = {"converged": c["converged"], "rejected": c["failed"], "relaxed": c["relaxed"]}
        bar.counts = counts
        if c["fraction"]:
            bar.total = max(c["read"], int(round(c["read"] / c["fraction"])))
        bar.set_postfix(counts, refresh=False)
        bar.update(c["chunk"] - c["chunk_relaxed"])  # the relaxed ones were counted as they finished

    try:
        with Interruptible("the structures in flight") as stop:
            summary = st.relax_file(
                args.input, args.output, model, args.variant, chunk=chunk, shard=shard, resume=args.resume,
                seed=args.seed, trajectory_dir=args.trajectory, on_chunk=on_chunk, stop=stop,
                keep_record=getattr(args, "keep_record", False),
                keep=(lambda rec, res: kept.append((rec, res))) if reference is not None else None,
                max_steps=args.max_steps, t_conv=t_conv, t_start=args.t_start, stochastic=args.stochastic,
                batch_size=batch_size, final_step=args.final_step, patience=args.patience, t_eq=args.t_eq,
                tail_t=args.tail_t, tail_steps=args.tail_steps, jump=args.jump, eq_tail_t=args.eq_tail_t,
                tail_scale=args.tail_scale, tail_t_max=args.tail_t_max, device=args.device,
                max_atoms=args.max_atoms, progress=bar.update if bar is not None else False)
    finally:
        if bar is not None:
            bar.close()
    return summary, kept, reference


def report(summary, output, variant, kept=(), reference=None) -> int:
    """Print the one-line summary (and the errors), return the exit code."""
    from morered.io import errors_path

    stops = ", ".join(f"{summary.stops[s]} {s}" for s in STOP_REASONS[:-1])
    target = output if summary.output_written else "no output file (nothing relaxed)"
    total = summary.read + summary.skipped
    resumed = f" ({summary.skipped} done before the resume)" if summary.skipped else ""
    steps = f"{summary.median_steps():.0f}" if summary.relaxed else "–"  # none relaxed: no median
    print(f"{total} structures{resumed}: {summary.relaxed} relaxed ({stops}), median steps "
          f"{steps}, wall {summary.wall:.1f} s, "
          f"{summary.relaxed / max(summary.wall, 1e-9):.1f} structures/s -> {target}")
    if reference is not None:
        _report_rmsd(reference, [r for r, _ in kept], [res for _, res in kept])
    if summary.failed:
        ep = errors_path(output)
        print(f"{summary.failed} structures not relaxed, reasons in {ep}:", file=sys.stderr)
        shown = 0
        import csv

        with open(ep, newline="") as f:
            for row in csv.DictReader(f):
                if shown >= 10:
                    break
                print(f"  {row['name']}: {row['reason']}", file=sys.stderr)
                shown += 1
        if summary.failed > 10:
            print(f"  ... and {summary.failed - 10} more", file=sys.stderr)
    if summary.interrupted:
        print("interrupted (rerun with --resume to continue)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


#: torch threads per process on CPU when --threads is not given, on machines with at most
#: SMALL_MACHINE_CPUS cores: measured on the 2-core machine (benchmarks/results/stream), 1 process
#: x 2 threads ran 52 structures/s, 2 processes x 1 thread 265/s, 1 x 1 290/s (10k structures)
DEFAULT_CPU_THREADS = 1
SMALL_MACHINE_CPUS = 2


def _set_threads(threads, device: str = "cpu") -> None:
    import os

    import torch

    if threads:
        torch.set_num_threads(int(threads))
    elif str(device) == "cpu" and (os.cpu_count() or 1) <= SMALL_MACHINE_CPUS:
        torch.set_num_threads(DEFAULT_CPU_THREADS)


def _devices(args) -> int:
    """Worker processes: --devices, else 1 (on the 2-core machine one process ran faster than two,
    290 vs 265 structures/s: see DEFAULT_CPU_THREADS)."""
    if args.devices is not None:
        return args.devices
    return 1
