"""Relaxation of large structure files: streamed disk to disk in flat memory, resumable, sharded.

:func:`relax_file` reads the input lazily (:class:`morered.io.StructureStream`), relaxes it in
*chunks* of consecutive records with :func:`morered.sampling.api.relax` (inside a chunk the
sampler's pool refills as molecules finish), and appends each finished chunk to the output in
input order. The chunk is the bounded reorder buffer: a molecule that converges early waits at
most until its chunk is done, and memory holds one chunk whatever the size of the file.

- **Output**: extxyz/xyz and SDF are appended a chunk at a time (complete records, fsync'ed);
  an ASE db gets one transaction per chunk. The file is readable up to its last complete record
  at any moment. Other formats (``.traj``, ``.pdb``, ...) cannot be appended: their results are
  kept in memory and written atomically at the end (memory then grows with the input).
- **Errors file**: rows appended the same way (``index,name,reason``).
- **Resume**: after every chunk a small record ``.OUTPUT.resume.json`` beside the output says
  how many records of the (shard's) input are finished, the index and name of the last one, the
  committed sizes of output and errors file, and the options. ``resume=True`` checks the options
  and the input, cuts output and errors file back to the committed sizes (a chunk torn by a
  crash, the "interrupted" rows) and continues with the next record, checking that the skipped
  records end at the recorded index and name. Chunks are the same in both runs (they are
  counted from the start of the shard's input and seeded by their first index), so a resumed
  run writes exactly what an uninterrupted one would. The record is removed when a run ends
  normally (kept with ``keep_record``: a finished shard of a multi-process run, resumed as a
  no-op while the interrupted shards continue).
- **Shards**: ``shard=(k, n)`` takes the records whose input index i has ``i % n == k``
  (round-robin: stable per index, no need to know the length of the file, and every shard gets
  a similar mix). :func:`merge_files` joins shard outputs (and their errors files) back into
  input order by the ``morered_index`` field every relaxed structure carries.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from morered.errors import InputError, OptionError
from morered.io import (Record, StructureStream, append_errors, append_structures, can_append, errors_path,
                        output_size, remove_stale, truncate_output, write_structures, write_trajectory)
from morered.sampling import api

#: the reason given to structures an interrupted run did not reach (resume relaxes them)
INTERRUPTED = "not relaxed: the run was interrupted"


@dataclass
class StreamSummary:
    """What a streamed run did (this run only; a resumed run also counts ``skipped``)."""

    read: int = 0
    relaxed: int = 0
    failed: int = 0
    skipped: int = 0  # finished by the interrupted run that this one resumed
    stops: Counter = field(default_factory=Counter)
    steps: Counter = field(default_factory=Counter)  # histogram of steps (bounded by max_steps)
    wall: float = 0.0
    interrupted: bool = False
    output_written: bool = False

    def median_steps(self) -> float:
        n = sum(self.steps.values())
        if not n:
            return float("nan")
        seen = 0
        for s in sorted(self.steps):
            seen += self.steps[s]
            if seen * 2 >= n:
                return float(s)
        return float("nan")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N; OptionError otherwise."""
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise OptionError(f"--shard {text!r}: expected K/N, e.g. 0/4 (shard K of N, K = 0..N-1)") from None
    if n < 1 or not 0 <= k < n:
        raise OptionError(f"--shard {text}: need N >= 1 and 0 <= K < N")
    return k, n


def resume_path(output) -> Path:
    """The resume record of ``output``: ``.NAME.resume.json`` in the same folder."""
    output = Path(output)
    return output.with_name(f".{output.name}.resume.json")


def _input_id(path: Path) -> dict:
    st = path.stat()
    return {"input": str(path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def _options_id(options: dict) -> str:
    return hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _shard_records(stream: Iterable[Record], shard: tuple[int, int]) -> Iterator[Record]:
    k, n = shard
    for rec in stream:
        if rec.index % n == k:
            yield rec


def relax_file(
    input_path,
    output_path,
    model,
    variant: str = "jt",
    *,
    chunk: int = 1024,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    seed: int = 0,
    trajectory_dir=None,
    on_chunk: Callable[[dict], None] | None = None,
    stop=None,
    keep: Callable[[Record, dict], None] | None = None,
    keep_record: bool = False,
    **relax_kwargs: Any,
) -> StreamSummary:
    """Relax every structure of ``input_path`` (or one shard of them) into ``output_path``,
    streamed (see the module docstring).

    Args:
        input_path: structure file (any format :class:`~morered.io.StructureStream` reads).
        output_path: output file; its errors file is :func:`morered.io.errors_path` of it.
        model: a :class:`~morered.sampling.models.LoadedModel` (resolved by the caller).
        variant: ``jt``, ``as``, ``itp`` or ``ddpm``.
        chunk: records per chunk (the reorder buffer; memory holds one chunk).
        shard: (k, n): only the records with ``index % n == k``.
        resume: continue an interrupted run (needs its resume record), else start afresh
            (an earlier output, errors file and resume record are removed first).
        seed: the noise seed; chunk c uses ``seed + index of its first record``.
        trajectory_dir: write one extxyz trajectory per structure there.
        on_chunk: called after every chunk with counts (``read``, ``relaxed``, ``failed``,
            ``converged``, ``fraction`` of the input read or None, ``chunk`` records in this chunk,
            ``chunk_relaxed`` of them relaxed). For finer updates pass ``relax_kwargs["progress"]``
            (called by the sampler with the structures finished at each step).
        stop: an object whose ``requested`` attribute, when true, ends the run after the chunk
            in flight (the records not reached are listed in the errors file as interrupted).
        keep: called with (record, result dict) for every record (e.g. an RMSD report); holding
            them is the caller's choice.
        keep_record: keep the resume record after a normal end (removed otherwise), so that
            ``resume=True`` finds the shard finished and does nothing: for a shard of a
            multi-process run, whose other shards may have been interrupted (the caller removes
            the records once all are done).
        relax_kwargs: passed to :func:`morered.sampling.api.relax` (max_steps, batch_size, ...).

    Raises:
        OptionError: ``resume`` without a matching resume record, or with other options.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    err_path, state_path = errors_path(output_path), resume_path(output_path)
    streaming = can_append(output_path)
    options = {"variant": variant, "seed": seed, "chunk": chunk, "shard": list(shard),
               **{k: v for k, v in relax_kwargs.items() if k not in ("progress", "device")},
               "model": str(getattr(model, "source", model))}
    ident = {**_input_id(input_path), "options": _options_id(options), "shard": list(shard)}
    stream = StructureStream(input_path)
    skip, last = 0, None
    if resume and state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError) as err:
            raise OptionError(f"--resume: cannot read {state_path}: {err}") from None
        for key in ("input", "size", "mtime", "options", "shard"):
            if state.get(key) != ident[key]:
                raise OptionError(f"--resume: {output_path} was written by a run with another {key} "
                                  f"({state.get(key)!r}, now {ident[key]!r}); rerun without --resume to start afresh")
        truncate_output(output_path, int(state["output_size"]))
        truncate_output(err_path, int(state["errors_size"]))
        skip, last = int(state["done"]), state.get("last")
    elif resume and (output_path.exists() or err_path.exists()):
        raise OptionError(f"--resume: {output_path} has no resume record ({state_path.name}): it finished, or "
                          "was not written by a streamed run; rerun without --resume to start afresh")
    else:
        for p in (output_path, err_path, state_path):
            remove_stale(p)

    summary = StreamSummary()
    t0 = time.time()
    records = _shard_records(stream, shard)
    if skip:
        rec = None
        for rec in islice(records, skip):
            pass
        if rec is None or last is None or [rec.index, rec.name] != list(last):
            got = None if rec is None else [rec.index, rec.name]
            raise InputError(f"--resume: the input does not match {output_path}: its record {skip} is "
                             f"{got}, the resume record says {last}")
        summary.skipped = skip
    buffered: list[tuple[Record, dict]] = []  # formats that cannot be appended: written at the end
    done_records = skip
    while True:
        if stop is not None and stop.requested:
            summary.interrupted = True
            break
        batch = list(islice(records, chunk))
        if not batch:
            break
        results = _relax_chunk(batch, model, variant, seed, trajectory_dir, relax_kwargs)
        failed = []
        relaxed_before = summary.relaxed
        for rec, res in zip(batch, results):
            if keep is not None:
                keep(rec, res)
            if res.get("positions") is None:
                continue
            summary.relaxed += 1
            summary.stops[res.get("morered_stop")] += 1
            summary.steps[int(res["morered_steps"])] += 1
        if streaming:
            failed = append_structures(output_path, batch, results)
        else:
            buffered.extend(zip(batch, results))
            failed = [Record(r.name, r.index, None, None, r.error or res.get("error") or "relaxation failed")
                      for r, res in zip(batch, results) if res.get("positions") is None]
        append_errors(err_path, failed)
        summary.read += len(batch)
        summary.failed += len(failed)
        done_records += len(batch)
        summary.output_written = summary.output_written or summary.relaxed > 0
        if streaming:
            _write_state(state_path, {**ident, "done": done_records, "last": [batch[-1].index, batch[-1].name],
                                      "output_size": output_size(output_path),
                                      "errors_size": output_size(err_path) if err_path.exists() else 0})
        if on_chunk is not None:
            on_chunk({"read": summary.read + skip, "relaxed": summary.relaxed, "failed": summary.failed,
                      "converged": summary.stops["converged"] + summary.stops["at_equilibrium"],
                      "fraction": stream.fraction(), "chunk": len(batch),
                      "chunk_relaxed": summary.relaxed - relaxed_before})
    if summary.interrupted:  # the records not reached: listed, so that every input is accounted for
        rest = [Record(r.name, r.index, None, None, INTERRUPTED) for r in records]
        append_errors(err_path, rest)
        summary.failed += len(rest)
        if not streaming:
            buffered.extend((r, {"positions": None}) for r in rest)
    if not streaming:
        failed = write_structures(output_path, [r for r, _ in buffered], [res for _, res in buffered])
        summary.output_written = any(res.get("positions") is not None for _, res in buffered)
    elif not summary.interrupted and not keep_record:
        remove_stale(state_path)
    summary.output_written = summary.output_written or output_path.exists()
    summary.wall = time.time() - t0
    return summary


def _relax_chunk(batch: list[Record], model, variant: str, seed: int, trajectory_dir,
                 relax_kwargs: dict) -> list[dict]:
    """One result dict per record (``positions`` None and ``error`` for a failure)."""
    ok = [j for j, r in enumerate(batch) if r.atoms is not None]
    out: list[dict] = [{"positions": None, "error": r.error} for r in batch]
    if not ok:
        return out
    kw = {k: v for k, v in relax_kwargs.items()}
    res = api.relax([batch[j].atoms for j in ok], model, variant, seed=seed + batch[0].index,
                    trajectory=bool(trajectory_dir), **kw)
    for j, r in zip(ok, res):
        rec = batch[j]
        if r.error is not None:
            out[j] = {"positions": None, "error": r.error}
            continue
        d = {"positions": r.positions, "morered_steps": r.steps, "morered_converged": r.converged,
             "morered_t0": r.t0, "morered_t_final": r.t_final, "morered_variant": variant,
             "morered_index": rec.index}
        if r.stop is not None:
            d["morered_stop"] = r.stop
        out[j] = d
        if trajectory_dir:
            Path(trajectory_dir).mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rec.name)
            write_trajectory(Path(trajectory_dir) / f"{rec.index:05d}_{safe}.extxyz", rec.atoms.numbers,
                             r.trajectory, r.frame_steps(), rec.name)
    return out


# ----------------------------------------------------------------------------------- merge


def _relaxed_index(rec: Record) -> int:
    info = rec.atoms.info if rec.atoms is not None else {}
    if "morered_index" not in info:
        raise InputError(f"{rec.name}: no morered_index field: not an output of `morered relax` (shards are "
                         "written by `morered relax --shard K/N`)")
    return int(info["morered_index"])


def _indexed(stream, n: int):
    for r in stream:
        yield _relaxed_index(r), n, r


def _read_errors(path: Path) -> Iterator[tuple[int, Record]]:
    if not path.exists():
        return
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                i = int(row["index"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{path}: not an errors file of `morered relax` (bad row {row})") from None
            yield i, Record(row.get("name") or "", i, None, None, row.get("reason") or "")


def merge_files(shards: list, output, chunk: int = 1024) -> tuple[int, int]:
    """Join shard outputs (and their errors files) into ``output`` (and its errors file) in
    input order, streamed: each shard is sorted by input index, so a k-way merge by
    ``morered_index`` keeps one record per shard in memory (plus one chunk of the output; an
    output format that cannot be appended, such as ``.traj``, is held whole). ``output`` is
    written to a temporary file in its folder, renamed at the end.

    Returns (structures written, error rows written). InputError when two shards hold the same
    input index (they overlap) or a file is not a relax output.
    """
    from morered.io import atomic_write

    output = Path(output)
    streams = []
    for s in shards:
        s = Path(s)
        if s.exists():
            streams.append(_indexed(StructureStream(s), len(streams)))
        elif not errors_path(s).exists():
            raise InputError(f"cannot read structures from {s}: no such file (nor its errors file)")
    n_out = n_err = 0
    prev = -1
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f".{output.stem}.merge-", suffix=output.suffix, dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # append_structures creates it (the suffix keeps the format)
    appendable = can_append(output)
    try:
        buf: list[Record] = []
        for i, _, rec in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
            if i <= prev:
                raise InputError(f"input index {i} is in more than one shard (or a shard is out of order): "
                                 "were the shards written with the same --shard N?")
            prev = i
            buf.append(rec)
            n_out += 1
            if len(buf) >= chunk and appendable:
                append_structures(tmp, buf, [{"positions": r.atoms.positions} for r in buf])
                buf = []
        if buf and appendable:
            append_structures(tmp, buf, [{"positions": r.atoms.positions} for r in buf])
        elif buf:  # a format that cannot be appended (.traj, .pdb, ...): written whole, from memory
            write_structures(tmp, buf, [{"positions": r.atoms.positions} for r in buf])
        if tmp.exists():
            os.replace(tmp, output)
        else:  # nothing relaxed: no output file
            remove_stale(output)
    finally:
        if tmp.exists():
            tmp.unlink()
    err_out = errors_path(output)
    errs = [_read_errors(errors_path(Path(s))) for s in shards]
    rows = heapq.merge(*errs, key=lambda t: t[0])
    first = next(rows, None)
    if first is None:
        remove_stale(err_out)
    else:
        with atomic_write(err_out) as tmp:
            tmp.unlink()
            buf = [first[1]]
            for _, rec in rows:
                buf.append(rec)
                if len(buf) >= chunk:
                    append_errors(tmp, buf)
                    n_err += len(buf)
                    buf = []
            append_errors(tmp, buf)
            n_err += len(buf)
    return n_out, n_err


# ----------------------------------------------------------------------------------- sizing


def auto_batch_size(device: str, mean_atoms: float) -> int:
    """The pool size when none is given: a number of atoms per model call that keeps the device
    busy without waste (CPU: ~2048 atoms, about 110 QM9 molecules; CUDA: ~1000 atoms per GiB of
    device memory), between 16 and 4096 molecules."""
    mean_atoms = max(float(mean_atoms), 2.0)
    atoms = 2048
    if str(device).startswith("cuda"):
        import torch

        gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
        atoms = int(1000 * gib)
    return int(np.clip(round(atoms / mean_atoms), 16, 4096))


def mean_atoms(path, n: int = 256) -> float:
    """Mean atom count of the first ``n`` readable structures of ``path``."""
    sizes = []
    for rec in StructureStream(path):
        if rec.atoms is not None:
            sizes.append(len(rec.atoms))
            if len(sizes) >= n:
                break
    return float(np.mean(sizes)) if sizes else 18.0
