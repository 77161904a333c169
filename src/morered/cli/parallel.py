"""`morered relax` in N processes: each relaxes one round-robin shard of the input into a hidden
shard file beside the output, then one merge into the output.

Two ways to start the processes, one split and one merge (:func:`finish`):

- ``--devices N`` (:func:`run_devices`): N workers started with ``multiprocessing`` (spawn, as
  torch needs); with ``--device cuda`` worker k uses ``cuda:k``, on CPU each runs ``--threads``
  torch threads (default 1). Ctrl-C reaches every worker (same process group); a SIGTERM to this
  process is passed on to them.
- ``torchrun --nproc_per_node N -m morered.cli relax ...`` (:func:`run_torchrun`): the N processes
  are torchrun's (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK`` set); rank k relaxes shard
  k/WORLD_SIZE, ``--device cuda`` means ``cuda:LOCAL_RANK``; the summaries are gathered with
  ``torch.distributed`` (gloo: CPU or GPU alike) and rank 0 merges and reports. Only rank 0 shows
  progress and prints; every rank exits with the same code. ``--shard`` and ``--devices`` are
  refused there.

Either way each process finishes its chunk in flight when interrupted; the shard files (with their
resume records) stay until a run ends normally, so ``--resume`` continues every shard (also across
the two launchers: the shard files are the same). For cluster array jobs, run ``--shard K/N``
yourself and join with ``morered merge``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

#: how long a torchrun rank that has finished its shard waits for the slowest one at the gather.
#: Long on purpose: shards of a large input can finish hours apart; a rank that dies is noticed by
#: torchrun, which ends the others.
GATHER_TIMEOUT = timedelta(days=7)


def shard_output(output, k: int, n: int) -> Path:
    """The hidden shard file of worker k of n: ``.NAME.shardKofN.EXT`` beside the output."""
    output = Path(output)
    return output.with_name(f".{output.stem}.shard{k}of{n}{output.suffix}")


def _shard_args(args, k: int, n: int, local: int) -> None:
    """Turn the options of the whole run into those of process k of n (``local``: its GPU)."""
    args.shard, args.output, args.devices = f"{k}/{n}", str(shard_output(args.output, k, n)), None
    args.keep_record = True  # a finished shard stays resumable while another was interrupted
    if k != 0:
        args.no_progress = True  # one progress bar: process 0's
    if str(args.device).startswith("cuda") and ":" not in str(args.device):
        args.device = f"cuda:{local}"
    if not str(args.device).startswith("cuda"):
        args.threads = args.threads or 1
        os.environ["OMP_NUM_THREADS"] = str(args.threads)


def _relax_outcome(args) -> tuple[str, object]:
    """Relax this process's shard: ("ok", StreamSummary) or ("error", message)."""
    from morered.cli import relax
    from morered.errors import MoreRedError

    try:
        return "ok", relax.relax_shard(args)[0]
    except MoreRedError as e:
        return "error", str(e)
    except KeyboardInterrupt:
        return "error", "interrupted"
    except Exception as e:  # noqa: BLE001 - reported by the parent, which exits 2
        return "error", f"internal error: {type(e).__name__}: {e}"


def _worker(args, k: int, n: int, queue) -> None:
    _shard_args(args, k, n, local=k)
    queue.put((k, *_relax_outcome(args)))


def finish(args, n: int, results: dict, how: str) -> int:
    """Combine the outcomes of the n shard processes (``results[k] = (status, summary or
    message)``): merge the shard files into ``args.output``, remove them (kept after an
    interruption, for ``--resume``), print the report and return the exit code. MoreRedError
    when a process failed or gave no result (the shard files are kept)."""
    from morered.cli.relax import report
    from morered.errors import MoreRedError
    from morered.io import errors_path, remove_stale
    from morered.sampling.stream import StreamSummary, merge_files, resume_path

    errors = [(k, payload) for k, (status, payload) in sorted(results.items()) if status == "error"]
    missing = [k for k in range(n) if k not in results]
    if errors or missing:
        why = (f"process {errors[0][0]}: {errors[0][1]}" if errors else
               f"process {missing[0]} ended without a result (killed?)")
        raise MoreRedError(f"{how}: {why} (shard files kept beside {args.output}; rerun with --resume)")
    total = StreamSummary()
    for _, s in results.values():
        for f in ("read", "relaxed", "failed", "skipped"):
            setattr(total, f, getattr(total, f) + getattr(s, f))
        total.stops.update(s.stops)
        total.steps.update(s.steps)
        total.wall = max(total.wall, s.wall)
        total.interrupted = total.interrupted or s.interrupted
    shards = [shard_output(args.output, k, n) for k in range(n)]
    merge_files(shards, args.output)
    total.output_written = Path(args.output).exists()
    if not total.interrupted:
        for s in shards:
            for f in (s, errors_path(s), resume_path(s)):
                remove_stale(f)
    print(f"{how}, merged into {args.output}", file=sys.stderr)
    return report(total, args.output, args.variant)


def run_devices(args, n: int) -> int:
    """``--devices N``: N spawned worker processes, then :func:`finish`."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, k, n, queue), daemon=False) for k in range(n)]
    old = signal.getsignal(signal.SIGTERM)

    def forward(signum, frame):
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()  # SIGTERM: the worker finishes its chunk in flight

    signal.signal(signal.SIGTERM, forward)
    results = {}
    try:
        for p in procs:
            p.start()
        while len(results) < n and any(p.is_alive() for p in procs) or not queue.empty():
            try:
                k, status, payload = queue.get(timeout=0.5)
                results[k] = (status, payload)
            except Exception:  # queue.Empty, or an interrupted wait
                continue
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # the workers got the Ctrl-C too: let them write what is done
        for p in procs:
            p.join()
        while not queue.empty():
            k, status, payload = queue.get()
            results[k] = (status, payload)
    finally:
        signal.signal(signal.SIGTERM, old)
    return finish(args, n, results, f"--devices {n}: {n} worker processes")


def torchrun_world() -> tuple[int, int, int] | None:
    """(RANK, LOCAL_RANK, WORLD_SIZE) when started by torchrun with more than one process, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None
    return (rank, local, world) if world > 1 else None


def run_torchrun(args, rank: int, local: int, world: int) -> int:
    """One rank of a torchrun launch: relax shard RANK/WORLD_SIZE, gather the outcomes, rank 0
    merges and reports (:func:`finish`); every rank returns rank 0's exit code, and only rank 0
    prints (an option error too: every rank finds the same one)."""
    import torch.distributed as dist

    from morered.cli import relax
    from morered.errors import EXIT_FATAL, MoreRedError

    try:
        relax.check_args(args, torchrun=True)
    except MoreRedError as e:
        if rank == 0:
            raise
        return e.exit_code
    whole = args.output
    _shard_args(args, rank, world, local)
    dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
    try:
        outcome = _relax_outcome(args)
        outcomes: list = [None] * world
        dist.all_gather_object(outcomes, outcome)
        args.output = whole
        code, error = 0, None
        if rank == 0:
            try:
                code = finish(args, world, dict(enumerate(outcomes)), f"torchrun: {world} processes")
            except Exception as e:  # noqa: BLE001 - raised below, after the others have their code
                code, error = getattr(e, "exit_code", EXIT_FATAL), e
        box = [code]
        dist.broadcast_object_list(box, src=0)
    finally:
        dist.destroy_process_group()
    if error is not None:
        raise error
    return int(box[0])

