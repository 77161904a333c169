"""Large-input relaxation benchmark: structures/s and peak RSS, streamed disk to disk.

Inputs are the QM9 test and validation molecules with Gaussian displacements (0.1 Å per
coordinate, seeded), repeated until N structures, written as extxyz. The measuring functions are
in :mod:`morered.evaluation.stream_bench` (shared with `morered benchmark speed --large N`, whose
inputs are diffused to t = 100 instead). Every measurement runs in its own process (`morered
relax ...`), its peak RSS taken from wait4; the machine's load average is printed with each
number (the machine may be shared).

    python benchmarks/stream_bench.py --sizes 10000 100000 --max-steps 1 --out benchmarks/results/stream
    python benchmarks/stream_bench.py --compare 10000 --max-steps 5     # stream vs in-memory, 2x1 vs 1x2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from morered.evaluation.stream_bench import make_input, run_measured  # inputs: 0.1 Å Gaussian (t=None)

IN_MEMORY = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from morered.io import read_structures, write_structures
from morered.sampling.api import relax
recs = read_structures(sys.argv[1])
t0 = time.time()
res = relax([r.atoms for r in recs], None, "jt", max_steps=int(sys.argv[3]), batch_size=int(sys.argv[5]))
write_structures(sys.argv[2], recs, [{"positions": r.positions, "morered_steps": r.steps} for r in res])
wall = time.time() - t0
print(f"{len(recs)} structures, wall {wall:.1f} s, {len(recs) / wall:.1f} structures/s")
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[])
    ap.add_argument("--compare", type=int, default=None, help="N for stream vs in-memory and processes x threads")
    ap.add_argument("--max-steps", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--work", default="runs/stream_bench")
    ap.add_argument("--out", default=None, help="append JSON lines here (a folder: results.jsonl in it)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    morered = [sys.executable, "-m", "morered.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    common = ["--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--no-progress"]
    for n in args.sizes:
        inp = make_input(n, work / f"in_{n}.extxyz")
        r = run_measured(morered + ["relax", str(inp), "-o", str(work / f"out_{n}.extxyz"), "--threads", "1"] + common,
                         env)
        emit({"bench": "stream", "n": n, "max_steps": args.max_steps, "threads": 1, "processes": 1, **r})
    if args.compare:
        n = args.compare
        inp = make_input(n, work / f"in_{n}.extxyz")
        r = run_measured(morered + ["relax", str(inp), "-o", str(work / f"cmp_stream_{n}.extxyz"), "--threads", "1"]
                         + common, env)
        emit({"bench": "stream", "n": n, "max_steps": args.max_steps, "threads": 1, "processes": 1, **r})
        r = run_measured([sys.executable, "-c", IN_MEMORY, str(inp), str(work / f"cmp_mem_{n}.extxyz"),
                          str(args.max_steps), "1", str(args.batch_size)], env)
        emit({"bench": "in_memory", "n": n, "max_steps": args.max_steps, "threads": 1, "processes": 1, **r})
        r = run_measured(morered + ["relax", str(inp), "-o", str(work / f"cmp_2x1_{n}.extxyz"), "--devices", "2",
                                    "--threads", "1"] + common, env)
        emit({"bench": "stream", "n": n, "max_steps": args.max_steps, "threads": 1, "processes": 2, **r})
        r = run_measured(morered + ["relax", str(inp), "-o", str(work / f"cmp_1x2_{n}.extxyz"), "--threads", "2"]
                         + common, {**env, "OMP_NUM_THREADS": "2"})
        emit({"bench": "stream", "n": n, "max_steps": args.max_steps, "threads": 2, "processes": 1, **r})
    return rows


if __name__ == "__main__":
    main()
