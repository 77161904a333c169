"""Streamed relaxation (issue 13): equal to in-memory, order kept under uneven convergence,
resume after an interruption, shards that partition the input and merge back, flat memory."""

import csv
import io
import json
import os
import signal
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from torch import nn

from morered import properties as P
from morered.cli import main
from morered.diffusion.schedule import NoiseSchedule
from morered.io import errors_path, progress_bar, read_structures
from morered.sampling import api, stream
from morered.sampling.models import LoadedModel


class PositionStub(nn.Module):
    """Predicts a step from each molecule's own geometry (the distance of its first two atoms), so
    molecules converge after different numbers of steps, and every result depends on the molecule
    alone, never on the others in the pool (element-wise arithmetic only)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, batch, t_norm=None):
        x, idx, n = batch[P.R], batch[P.idx_m], batch[P.n_atoms]
        first = torch.cumsum(n, 0) - n
        d = (x[first] - x[first + 1]).norm(dim=-1)
        t = ((d * 37.0) % 1.0) * 0.08  # 0..80 of 1000 steps: uneven, model-specific
        out = {P.t_pred: t, P.t_pred_atom: t[idx], P.eps_pred: 0.3 * x + torch.tensor([0.05, -0.02, 0.01])}
        return out


def _stub():
    return LoadedModel(PositionStub(), NoiseSchedule("polynomial", 1000), "jt", {1, 6, 7, 8, 9}, 29, "stub")


def _write(path, test_molecules, n, bad=()):
    rng = np.random.default_rng(3)
    frames = []
    for k in range(n):
        x, z = test_molecules.molecule(k % 8)
        x = x.astype(np.float64) + 0.05 * rng.standard_normal(x.shape)
        if k in bad:
            x[1] = x[0]  # overlapping atoms: an errors-file row
        frames.append(Atoms(numbers=z, positions=x, info={"name": f"m{k}"}))
    ase.io.write(path, frames, format="extxyz")
    return frames


KW = dict(max_steps=40, patience=5, batch_size=3)


def _rows(path):
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_stream_equals_in_memory_and_keeps_order_under_uneven_convergence(tmp_path, test_molecules):
    inp, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    frames = _write(inp, test_molecules, 23, bad={4, 17})
    summary = stream.relax_file(inp, out, _stub(), chunk=5, **KW)
    ref = api.relax(frames, _stub(), **KW)
    got = read_structures(out)
    assert [r.atoms.info["morered_index"] for r in got] == [k for k in range(23) if k not in (4, 17)]
    assert [r.atoms.info["name"] for r in got] == [f"m{k}" for k in range(23) if k not in (4, 17)]
    expected = [r for r in ref if r.error is None]
    steps = [r.atoms.info["morered_steps"] for r in got]
    assert steps == [r.steps for r in expected]
    assert len(set(steps)) > 3  # convergence really was uneven inside the chunks
    for r, e in zip(got, expected):
        np.testing.assert_allclose(r.atoms.positions, e.positions, rtol=0, atol=1e-6)  # extxyz keeps 8 digits
    assert [row["index"] for row in _rows(errors_path(out))] == ["4", "17"]
    assert (summary.read, summary.relaxed, summary.failed) == (23, 21, 2)
    assert not stream.resume_path(out).exists()  # a finished run leaves no resume record


class _StopAfter:
    def __init__(self, n):
        self.n, self.requested = n, False

    def __call__(self, counts):
        self.n -= 1
        self.requested = self.n <= 0


@pytest.mark.parametrize("ext", ["extxyz", "sdf", "db"])
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, test_molecules, ext):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 17, bad={6})
    full, part = tmp_path / f"full.{ext}", tmp_path / f"part.{ext}"
    stream.relax_file(inp, full, _stub(), chunk=4, **KW)
    stop = _StopAfter(2)
    s1 = stream.relax_file(inp, part, _stub(), chunk=4, on_chunk=stop, stop=stop, **KW)
    assert s1.interrupted and s1.read == 8
    assert "interrupted" in _rows(errors_path(part))[-1]["reason"]  # the rest are accounted for
    assert len(read_structures(part)) == 7  # readable up to its last complete record
    if ext != "db":  # a crash in the middle of an append: a torn record at the end
        with open(part, "ab") as f:
            f.write(b"23\nProperties=species:S:1:pos:R:3 name=torn\nC 0.0 0.0")
    s2 = stream.relax_file(inp, part, _stub(), chunk=4, resume=True, **KW)
    assert (s2.skipped, s2.read, s2.interrupted) == (8, 9, False)
    if ext == "db":
        a, b = read_structures(full), read_structures(part)
        assert [r.atoms.info for r in a] == [r.atoms.info for r in b]
        assert all(np.array_equal(x.atoms.positions, y.atoms.positions) for x, y in zip(a, b))
    else:
        assert part.read_bytes() == full.read_bytes()
    assert errors_path(part).read_bytes() == errors_path(full).read_bytes()
    assert not stream.resume_path(part).exists()


def test_resume_refuses_other_options_and_finished_outputs(tmp_path, test_molecules):
    from morered.errors import OptionError

    inp, out = tmp_path / "in.extxyz", tmp_path / "out.extxyz"
    _write(inp, test_molecules, 9)
    stop = _StopAfter(1)
    stream.relax_file(inp, out, _stub(), chunk=4, on_chunk=stop, stop=stop, **KW)
    with pytest.raises(OptionError, match="another options"):
        stream.relax_file(inp, out, _stub(), chunk=4, resume=True, **{**KW, "max_steps": 7})
    stream.relax_file(inp, out, _stub(), chunk=4, resume=True, **KW)
    with pytest.raises(OptionError, match="no resume record"):
        stream.relax_file(inp, out, _stub(), chunk=4, resume=True, **KW)


def test_cli_resume_after_ctrl_c_equals_uninterrupted(tmp_path, test_molecules, tiny_model_path, monkeypatch):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 7)
    args = ["--model", tiny_model_path, "--batch-size", "1", "--max-steps", "3", "--no-progress"]
    full, part = tmp_path / "full.extxyz", tmp_path / "part.extxyz"
    assert main(["relax", str(inp), "-o", str(full), *map(str, args)]) == 0
    real, calls = api.relax, []

    def relax_then_ctrl_c(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(api, "relax", relax_then_ctrl_c)
    monkeypatch.setattr("morered.cli.relax.CHUNK_BATCHES", 2)
    monkeypatch.setattr("morered.cli.relax.CHUNK_BATCHES", 2)
    assert main(["relax", str(inp), "-o", str(part), *map(str, args)]) == 130
    assert len(read_structures(part)) == 4
    monkeypatch.setattr(api, "relax", real)
    assert main(["relax", str(inp), "-o", str(part), "--resume", *map(str, args)]) == 0
    # chunks of 2 vs the full run's chunks of 8: only the chunking differs, and the tiny model's
    # deterministic updates do not depend on it beyond float32 rounding
    a, b = read_structures(full), read_structures(part)
    assert [r.name for r in a] == [r.name for r in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.atoms.positions, y.atoms.positions, atol=1e-4)
    assert not errors_path(part).exists()


def test_shards_partition_the_input_and_merge_back_in_order(tmp_path, test_molecules, capsys):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 20, bad={5, 13})
    full = tmp_path / "full.extxyz"
    stream.relax_file(inp, full, _stub(), chunk=4, **KW)
    shards = [tmp_path / f"s{k}.extxyz" for k in range(3)]
    seen = []
    for k, s in enumerate(shards):
        stream.relax_file(inp, s, _stub(), chunk=4, shard=(k, 3), **KW)
        idx = [r.atoms.info["morered_index"] for r in read_structures(s)]
        idx += [int(row["index"]) for row in _rows(errors_path(s))]
        assert all(i % 3 == k for i in idx)
        seen += idx
    assert sorted(seen) == list(range(20))  # every structure in exactly one shard
    merged = tmp_path / "merged.extxyz"
    assert main(["merge", *map(str, shards), "-o", str(merged)]) == 1  # 2 errors
    a, b = read_structures(full), read_structures(merged)
    assert [r.atoms.info["morered_index"] for r in b] == [k for k in range(20) if k not in (5, 13)]
    assert all(np.array_equal(x.atoms.positions, y.atoms.positions) for x, y in zip(a, b))
    assert [r["index"] for r in _rows(errors_path(merged))] == ["5", "13"]
    # the same shard twice: refused, nothing written
    assert main(["merge", str(shards[0]), str(shards[0]), "-o", str(tmp_path / "bad.extxyz")]) == 2
    assert "more than one shard" in capsys.readouterr().err
    assert not (tmp_path / "bad.extxyz").exists()


@pytest.mark.parametrize("shard", ["3/3", "1", "a/b", "0/0", "-1/2"])
def test_bad_shard_exits_2(tmp_path, test_molecules, shard, capsys):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 2)
    assert main(["relax", str(inp), "-o", str(tmp_path / "o.extxyz"), f"--shard={shard}", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: --shard")


def test_machine_readable_progress_lines():
    buf = io.StringIO()
    bar = progress_bar(100, "relax", "mol", stream=buf, machine=True)
    bar.counts = {"converged": 3, "rejected": 1}
    bar.update(40)
    bar.close()
    lines = [json.loads(line.split(" ", 1)[1]) for line in buf.getvalue().splitlines() if line.startswith("PROGRESS ")]
    assert lines and lines[-1]["done"] == 40 and lines[-1]["total"] == 100
    assert lines[-1]["converged"] == 3 and lines[-1]["rejected"] == 1 and "eta_s" in lines[-1]
    assert len(buf.getvalue().splitlines()) <= 3  # throttled: no line per update


@pytest.mark.slow
def test_devices_2_processes_give_one_merged_output(tmp_path, test_molecules, tiny_model_path):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 9, bad={2})
    out = tmp_path / "out.extxyz"
    assert main(["relax", str(inp), "-o", str(out), "--model", str(tiny_model_path), "--max-steps", "2",
                 "--devices", "2", "--no-progress"]) == 1
    assert [r.atoms.info["morered_index"] for r in read_structures(out)] == [0, 1, 3, 4, 5, 6, 7, 8]
    assert [r["index"] for r in _rows(errors_path(out))] == ["2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz", "out.errors.csv", "out.extxyz"]


def _torchrun(args, nproc=2):
    """`morered relax ARGS` under torchrun with ``nproc`` CPU processes: (rc, stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                        "-m", "morered.cli", "relax", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow
def test_torchrun_2_processes_equal_one_process_and_leave_no_shard_files(tmp_path, test_molecules, tiny_model_path):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 11, bad={2})
    opts = ["--model", tiny_model_path, "--max-steps", "3", "--batch-size", "2"]
    one, two = tmp_path / "one.extxyz", tmp_path / "two.extxyz"
    assert main(["relax", str(inp), "-o", str(one), "--no-progress", *map(str, opts)]) == 1  # one bad structure
    rc, out, err = _torchrun([inp, "-o", two, *opts])
    assert rc != 0, err[-3000:]  # torchrun exits 1 when a rank does (here: 1, one structure rejected)
    assert out.count("structures:") == 1 and "11 structures: 10 relaxed" in out  # rank 0 alone reports
    assert err.count("torchrun: 2 processes, merged into") == 1
    # progress: rank 0's alone (machine-readable lines: stderr is not a terminal)
    assert err.count("PROGRESS ") >= 1 and "relax (jt, shard 0/2)" in err and "shard 1/2" not in err
    a, b = read_structures(one), read_structures(two)
    assert [r.name for r in b] == [r.name for r in a] == [f"m{k}" for k in range(11) if k != 2]
    for x, y in zip(a, b):
        np.testing.assert_allclose(y.atoms.positions, x.atoms.positions, rtol=0, atol=1e-6)
    assert two.read_bytes() == one.read_bytes()
    assert errors_path(two).read_bytes() == errors_path(one).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.extxyz", "one.extxyz", "one.errors.csv", "two.extxyz", "two.errors.csv"])  # no shard files


@pytest.mark.slow
def test_torchrun_refuses_shard_and_reports_it_once(tmp_path, test_molecules, tiny_model_path):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 3)
    rc, out, err = _torchrun([inp, "-o", tmp_path / "o.extxyz", "--model", tiny_model_path, "--shard", "0/2"])
    assert rc != 0
    lines = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--shard" in lines[0] and "torchrun" in lines[0], out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]


@pytest.mark.slow
def test_torchrun_resumes_shards_one_interrupted_one_finished(tmp_path, test_molecules, tiny_model_path,
                                                              monkeypatch):
    """Shard 0 interrupted after its first chunk, shard 1 finished (as when Ctrl-C reaches a
    multi-process run late): `--resume` under torchrun continues shard 0, leaves shard 1 as it
    is, and the merged output equals an uninterrupted one-process run."""
    from morered.cli import parallel
    from morered.cli.main import build_parser

    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 20, bad={7})
    opts = ["--model", str(tiny_model_path), "--max-steps", "3", "--batch-size", "1", "--no-progress"]
    full, out = tmp_path / "full.extxyz", tmp_path / "out.extxyz"
    assert main(["relax", str(inp), "-o", str(full), *opts]) == 1
    real = api.relax
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # _shard_args sets it: restored after the test
    for k in range(2):  # what the two processes of an interrupted run leave behind
        args = build_parser().parse_args(["relax", str(inp), "-o", str(out), *opts])
        parallel._shard_args(args, k, 2, k)
        calls = []

        def relax_then_ctrl_c(*a, **kw):
            calls.append(1)
            res = real(*a, **kw)
            if k == 0 and len(calls) == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return res

        monkeypatch.setattr(api, "relax", relax_then_ctrl_c)
        summary = parallel._relax_outcome(args)[1]
        assert summary.interrupted == (k == 0)
        assert stream.resume_path(parallel.shard_output(out, k, 2)).exists()  # both resumable
    monkeypatch.setattr(api, "relax", real)
    rc, stdout, err = _torchrun([inp, "-o", out, "--resume", *opts])
    assert "20 structures (18 done before the resume): 2 relaxed" in stdout, err[-3000:]
    assert out.read_bytes() == full.read_bytes()
    assert errors_path(out).read_bytes() == errors_path(full).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.extxyz", "full.extxyz", "full.errors.csv", "out.extxyz", "out.errors.csv"])


def _peak_rss_mib(tmp_path, model, n):
    inp = tmp_path / f"in{n}.xyz"
    with open(inp, "w") as f:
        for k in range(n):
            f.write(f"3\nname=w{k}\nO 0.0 0.0 0.{k % 7 + 1}\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n")
    cmd = [sys.executable, "-m", "morered.cli", "relax", str(inp), "-o", str(tmp_path / f"out{n}.xyz"), "--model",
           str(model), "--max-steps", "1", "--no-progress", "--threads", "1", "--batch-size", "256"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err[-2000:]
    return ru.ru_maxrss / 1024


@pytest.mark.slow
def test_memory_stays_flat_on_a_50k_structure_file(tmp_path, tiny_model_path):
    """Peak RSS for 50k structures within 64 MiB of that for 2k (in-memory reading held ~1 GiB)."""
    small = _peak_rss_mib(tmp_path, tiny_model_path, 2_000)
    large = _peak_rss_mib(tmp_path, tiny_model_path, 50_000)
    print(f"peak RSS: 2k structures {small:.0f} MiB, 50k structures {large:.0f} MiB")
    assert large - small < 64, (small, large)


# ------------------------------------------------------------------ issue 11: benchmark options
@pytest.fixture
def no_benchmark(monkeypatch):
    import morered.evaluation.benchmark as b

    def boom(*a, **k):
        raise AssertionError("the benchmark ran although its options should have been refused")

    monkeypatch.setattr(b, "run_relax_benchmark", boom)
    monkeypatch.setattr("morered.training.bench.bench_train", boom)


@pytest.mark.parametrize("opts, word", [
    (["--n", "0"], "--n"), (["--n", "-3"], "--n"), (["--batch-size", "0"], "--batch-size"),
    (["--max-steps", "-1"], "--max-steps"), (["--methods", "jt,nope"], "--methods"), (["--methods", ","], "--methods"),
    (["--kinds", "diffused_x"], "--kinds"), (["--kinds", ""], "--kinds"), (["--fmax", "0"], "--fmax"),
    (["--inputs", "MISSING.xyz", "--refs", "MISSING.xyz"], "--inputs"), (["--inputs", "IN.xyz"], "--refs"),
    (["--inputs", "IN.xyz", "--refs", "DIR"], "--refs"), (["--out", "IN.xyz"], "--out"),
])
def test_benchmark_relax_bad_options_exit_2_before_work(tmp_path, no_benchmark, capsys, opts, word):
    (tmp_path / "IN.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.7\n")
    (tmp_path / "DIR").mkdir()
    opts = [str(tmp_path / o) if o in ("IN.xyz", "DIR", "MISSING.xyz") else o for o in opts]
    if "--out" not in opts:
        opts += ["--out", str(tmp_path / "report")]
    assert main(["benchmark", "relax", *opts]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and word in err and "\n" not in err


@pytest.mark.parametrize("opts", [["--batch-size", "0"], ["--batches", "x"], ["--threads", "0"], ["--threads", "a"],
                                  ["--kernels", "fast"], ["--device", "cuda:7"]])
def test_benchmark_train_bad_options_exit_2_before_work(no_benchmark, capsys, opts):
    try:
        code = main(["benchmark", "train", *opts])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_sigterm_a_subprocess_midway_then_resume_equals_uninterrupted(tmp_path, test_molecules, tiny_model_path):
    import time

    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 120, bad={50})
    opts = ["--model", str(tiny_model_path), "--batch-size", "2", "--max-steps", "4", "--threads", "1",
            "--no-progress"]
    full, part = tmp_path / "full.extxyz", tmp_path / "part.extxyz"
    proc = subprocess.Popen([sys.executable, "-m", "morered.cli", "relax", str(inp), "-o", str(part), *opts],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not part.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the first chunk (16 structures) is committed
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    n_done = len(read_structures(part))
    assert 0 < n_done < 119
    assert main(["relax", str(inp), "-o", str(part), "--resume", *opts]) == 1  # one bad structure
    assert main(["relax", str(inp), "-o", str(full), *opts]) == 1
    assert part.read_bytes() == full.read_bytes()
    assert errors_path(part).read_bytes() == errors_path(full).read_bytes()


def test_merge_into_a_format_that_cannot_be_appended(tmp_path, test_molecules):
    inp = tmp_path / "in.extxyz"
    _write(inp, test_molecules, 7)
    shards = [tmp_path / f"s{k}.traj" for k in range(2)]
    for k, s in enumerate(shards):
        stream.relax_file(inp, s, _stub(), chunk=2, shard=(k, 2), **KW)
    stream.merge_files(shards, tmp_path / "all.traj")
    assert [r.atoms.info["morered_index"] for r in read_structures(tmp_path / "all.traj")] == list(range(7))


def test_auto_batch_size_follows_molecule_size():
    assert stream.auto_batch_size("cpu", 18) == 114
    assert stream.auto_batch_size("cpu", 200) == 16  # at least 16
    assert stream.auto_batch_size("cpu", 2) == 1024
