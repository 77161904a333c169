"""`morered relax --devices N`: N worker processes, each relaxing one round-robin shard of the
input into a hidden shard file beside the output, then one merge into the output.

Workers are started with ``multiprocessing`` (spawn, as torch needs); with ``--device cuda``
worker k uses ``cuda:k``, on CPU each runs ``--threads`` torch threads (default 1). Ctrl-C
reaches every worker (same process group); a SIGTERM to this process is passed on to them. Each
finishes its chunk in flight; the shard files (with their resume records) stay until a run ends
normally, so ``--resume`` continues every shard. For cluster array jobs, run ``--shard K/N``
yourself and join with ``morered merge``; under ``torchrun`` pass ``--shard $RANK/$WORLD_SIZE``.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
from pathlib import Path


def shard_output(output, k: int, n: int) -> Path:
    """The hidden shard file of worker k of n: ``.NAME.shardKofN.EXT`` beside the output."""
    output = Path(output)
    return output.with_name(f".{output.stem}.shard{k}of{n}{output.suffix}")


def _worker(args, k: int, n: int, queue) -> None:
    import os

    from morered.errors import MoreRedError

    args.shard, args.output, args.devices = f"{k}/{n}", str(shard_output(args.output, k, n)), 1
    if k != 0:
        args.no_progress = True  # one progress bar: worker 0's
    if str(args.device).startswith("cuda") and ":" not in str(args.device):
        args.device = f"cuda:{k}"
    if not str(args.device).startswith("cuda"):
        args.threads = args.threads or 1
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from morered.cli import relax

    relax.report = lambda summary, *a, **kw: queue.put((k, "ok", summary)) or 0
    try:
        relax.run(args)
    except MoreRedError as e:
        queue.put((k, "error", str(e)))
    except KeyboardInterrupt:
        queue.put((k, "error", "interrupted"))


def run_devices(args, n: int) -> int:
    from morered.cli.relax import report
    from morered.errors import MoreRedError
    from morered.io import errors_path, remove_stale
    from morered.sampling.stream import StreamSummary, merge_files, resume_path

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, k, n, queue), daemon=False) for k in range(n)]
    old = signal.getsignal(signal.SIGTERM)

    def forward(signum, frame):
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()  # SIGTERM: the worker finishes its chunk in flight

    signal.signal(signal.SIGTERM, forward)
    try:
        for p in procs:
            p.start()
        results = {}
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
    errors = [payload for status, payload in results.values() if status == "error"]
    missing = [k for k in range(n) if k not in results]
    if errors or missing:
        why = errors[0] if errors else f"worker {missing[0]} ended without a result (killed?)"
        raise MoreRedError(f"--devices {n}: {why} (shard files kept beside {args.output}; rerun with --resume)")
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
    print(f"{n} worker processes, merged into {args.output}", file=sys.stderr)
    return report(total, args.output, args.variant)
