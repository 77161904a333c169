"""Large-input relaxation benchmark: structures/s and peak RSS, streamed disk to disk.

Inputs are the QM9 test and validation molecules with Gaussian displacements (0.1 Å per
coordinate, seeded), repeated until N structures, written as extxyz. Every measurement runs in
its own process (`morered relax ...`), its peak RSS taken from wait4; the machine's load average
is printed with each number (the machine may be shared).

    python benchmarks/stream_bench.py --sizes 10000 100000 --max-steps 1 --out benchmarks/results/stream
    python benchmarks/stream_bench.py --compare 10000 --max-steps 5     # stream vs in-memory, 2x1 vs 1x2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_input(n: int, path: Path, seed: int = 0) -> Path:
    """N displaced QM9 test+validation molecules as extxyz (written fast, line by line)."""
    if path.exists():
        return path
    from ase.data import chemical_symbols

    from morered.data.qm9 import load_qm9, split_ids

    qm9 = load_qm9()
    ids = split_ids(qm9)
    mols = qm9.select_ids(np.concatenate([ids["test"], ids["val"]]))
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".part")
    with open(tmp, "w") as f:
        for k in range(n):
            x, z = mols.molecule(k % len(mols))
            x = x.astype(np.float64) + 0.1 * rng.standard_normal(x.shape)
            lines = [f"{len(z)}", f'name=m{k} pbc="F F F"']
            lines += [f"{chemical_symbols[int(a)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for a, p in zip(z, x)]
            f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def run_measured(cmd: list[str], env=None) -> dict:
    """Like :func:`measure`, with peak RSS of the process tree's largest member (wait4 per child)."""
    load = os.getloadavg()[0]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.time() - t0
    rate = None
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if "structures/s" in last:
        rate = float(last.split("structures/s")[0].split(",")[-1].strip())
    return {"cmd": " ".join(cmd), "rc": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
            "structures_per_s": rate, "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "summary": last,
            "stderr_tail": err.strip().splitlines()[-2:], "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


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
