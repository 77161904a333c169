"""Large-input relaxation measured from the outside: N structures written to disk, relaxed by
`morered relax` in its own process (streamed disk to disk), with structures/s, wall time, peak
RSS and the machine's load average.

Used by `morered benchmark speed --large N` (:func:`large_input_row`) and by
``benchmarks/stream_bench.py`` (stream vs in-memory, processes x threads).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_input(n: int, path, seed: int = 0, t: int | None = None, sigma: float = 0.1) -> Path:
    """Write ``n`` displaced QM9 test + validation molecules (repeated as needed, in that order)
    to ``path`` as extxyz, line by line (memory holds the QM9 arrays, not the structures).

    Args:
        t: forward diffusion q(x_t | x_0) to step ``t`` (polynomial schedule, T = 1000, centred
            noise, as the ``diffused_<t>`` benchmark inputs); None: Gaussian displacements of
            ``sigma`` Å per coordinate instead.
        seed: one random stream for the whole file.

    An existing ``path`` is returned as it is (name it after n, t and seed).
    """
    path = Path(path)
    if path.exists():
        return path
    from ase.data import chemical_symbols

    from morered.data.qm9 import load_qm9, split_ids

    qm9 = load_qm9()
    ids = split_ids(qm9)
    mols = qm9.select_ids(np.concatenate([ids["test"], ids["val"]]))
    if t is not None:
        from morered.diffusion.schedule import NoiseSchedule

        ab = float(NoiseSchedule("polynomial", 1000).alpha_bar[int(t)])
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as f:
        for k in range(n):
            x, z = mols.molecule(k % len(mols))
            x = x.astype(np.float64)
            eps = rng.standard_normal(x.shape)
            if t is None:
                x = x + sigma * eps
            else:
                eps -= eps.mean(0)
                x = np.sqrt(ab) * (x - x.mean(0)) + np.sqrt(1 - ab) * eps
            lines = [f"{len(z)}", f'name=m{k} pbc="F F F"']
            lines += [f"{chemical_symbols[int(a)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for a, p in zip(z, x)]
            f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def run_measured(cmd: list[str], env=None) -> dict:
    """Run ``cmd`` to its end: exit code, wall (s), peak RSS (MiB, from wait4: the largest of the
    process and its waited-for children), the structures/s of `morered relax`'s summary line
    (None if it printed none), and the 1-minute load average before and after."""
    import tempfile

    load = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=fout, stderr=ferr, env=env, text=True)
        _, status, ru = os.wait4(p.pid, 0)  # this process's own peak RSS (not an earlier child's)
        wall = time.time() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    rate = None
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if "structures/s" in last:
        rate = float(last.split("structures/s")[0].split(",")[-1].strip())
    return {"cmd": " ".join(map(str, cmd)), "rc": p.returncode, "wall_s": round(wall, 1), "structures_per_s": rate,
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "summary": last,
            "stderr_tail": err.strip().splitlines()[-2:], "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def large_input_row(n: int, work, model=None, max_steps: int | None = None, t: int = 100, seed: int = 0,
                    extra: tuple = ()) -> dict:
    """Relax ``n`` structures (:func:`make_input`, diffused to ``t``) from disk to disk with
    `morered relax` in a subprocess (its default stopping rule, or at most ``max_steps``; its
    default threads and batch size; ``extra``: more relax options) and measure it
    (:func:`run_measured`). The input is kept in ``work`` for the next run; the output removed.

    Returns the measurement plus ``n``, ``t``, ``max_steps``, ``input_mib`` and ``rate_process``
    (n / process wall, imports and model loading included). OSError when `morered relax` exits
    other than 0 or 1 (1: some structures were rejected, listed in its errors file).
    """
    from morered.io import errors_path, remove_stale

    work = Path(work)
    inp = make_input(n, work / f"large_{n}_t{t}_seed{seed}.extxyz", seed=seed, t=t)
    out = work / f"large_{n}_out.extxyz"
    cmd = [sys.executable, "-m", "morered.cli", "relax", str(inp), "-o", str(out), "--no-progress",
           "--seed", str(seed)]
    if model:
        cmd += ["--model", str(model)]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    cmd += [str(x) for x in extra]
    r = run_measured(cmd)
    for f in (out, errors_path(out)):
        remove_stale(f)
    if r["rc"] not in (0, 1) or r["structures_per_s"] is None:
        raise OSError(f"`morered relax` on {n} structures exited {r['rc']}: {' '.join(r['stderr_tail'])}")
    return {"n": n, "t": t, "max_steps": max_steps, "input_mib": round(inp.stat().st_size / 2**20, 1),
            "rate_process": round(n / max(r["wall_s"], 1e-9), 2), **r}
