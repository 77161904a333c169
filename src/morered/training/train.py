"""`morered train`: config -> data -> model -> task -> trainer -> fit, resuming from the last
checkpoint in ``--out`` when there is one."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import (Callback, EarlyStopping, ModelCheckpoint, OnExceptionCheckpoint, Timer,
                                         TQDMProgressBar)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from morered.data.molecules import MoleculeDataset, Molecules
from morered.errors import InputError, Interrupted, ModelError, OptionError, OutputError
from morered.interrupt import Interruptible
from morered.training.config import parse_duration
from morered.training.task import DiffusionTask, init_from_model, save_model

log = logging.getLogger("morered.train")


# ---------------------------------------------------------------------------- data
def load_training_data(cfg: dict) -> tuple[Molecules, Molecules, dict]:
    """(train, val, dataset_info) for QM9 or a user's file of equilibrium structures."""
    d = cfg["data"]
    if d["source"] == "qm9":
        from morered.data.qm9 import load_qm9, split_ids

        mols = load_qm9()
        ids = split_ids(mols)
        train, val = mols.select_ids(ids["train"]), mols.select_ids(ids["val"])
        name = "qm9"
    elif d["source"] == "qm7x":
        from morered.data.qm7x import training_data

        if not d["data_dir"]:
            raise ValueError("data.source qm7x needs data.data_dir (--data-dir): the folder of the QM7-X HDF5 files")
        train, val, errors = training_data(d["data_dir"], d["split_file"], cfg["seed"])
        for e in errors:
            log.warning("QM7-X: skipped %s", e)
        skipped = [{"index": -1, "name": "qm7x", "reason": str(e)} for e in errors]
        name = "qm7x"
    else:
        from morered.data.structures import split_structures

        mols, skipped = load_own_structures(d["source"])
        split = split_structures(mols, d["split_file"], d["val_fraction"], d["test_fraction"], cfg["seed"])
        train, val = mols.subset(split["train"]), mols.subset(split["val"])
        name = str(d["source"])
    if d["limit_train"]:
        train = train.subset(np.arange(min(int(d["limit_train"]), len(train))))
    if d["limit_val"]:
        val = val.subset(np.arange(min(int(d["limit_val"]), len(val))))
    if len(train) == 0 or len(val) == 0:
        raise InputError(f"need at least one training and one validation structure (got {len(train)}, {len(val)})")
    info = {
        "name": name,
        "elements": sorted(int(z) for z in np.unique(train.numbers)),
        "max_atoms": int(train.n_atoms().max()),
        "max_distance": round(max_distance(train), 3),
        "n_train": len(train),
        "n_val": len(val),
    }
    if d["source"] != "qm9":
        info["n_skipped"] = len(skipped)
        info["skipped"] = skipped
    return train, val, info


def soft_mode_table(cfg: dict, train: Molecules):
    """The :class:`~morered.data.soft_modes.SoftModes` of ``diffusion.soft_modes`` (None when off),
    for ``molecules`` training molecules chosen with the run's seed, cached under $MORERED_CACHE."""
    sm = cfg["diffusion"].get("soft_modes") or {}
    if float(sm.get("fraction", 0)) <= 0:
        return None
    from morered.data.qm9 import cache_dir
    from morered.data.soft_modes import soft_modes_for

    table = soft_modes_for(train, int(sm.get("molecules", 0)), int(sm.get("draws", 8)), int(cfg["seed"]),
                           cache_dir() / "soft_modes", progress=sys.stderr.isatty())
    log.info("soft-mode noise: %d molecules with MMFF94 draws (%d without), fraction %s for t <= %s",
             len(table), len(table.errors), sm["fraction"], sm.get("t_max"))
    if len(table) == 0:
        raise InputError("diffusion.soft_modes: MMFF94 could not type any of the chosen training molecules")
    return table


def max_distance(mols: Molecules) -> float:
    """The largest interatomic distance (Å) in any molecule of ``mols`` (stored with the model:
    relaxation refuses structures more than twice as spread out)."""
    best = 0.0
    for k in range(len(mols)):
        x = np.asarray(mols.molecule(k)[0], dtype=np.float64)
        if len(x) > 1:
            lo, hi = x.min(0), x.max(0)
            if np.sqrt(((hi - lo) ** 2).sum()) <= best:  # the box diagonal bounds every distance
                continue
            best = max(best, float(np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).max()))
    return best


def load_own_structures(path) -> tuple[Molecules, list[dict]]:
    """A user's training structures and the ones skipped, each ``{"index", "name", "reason"}``.

    Skipped (with a warning naming each): records that cannot be read (a bad xyz frame, a broken
    SDF record, implicit hydrogens) and structures :func:`morered.io.validate` refuses (fewer than
    2 atoms, non-finite coordinates, atoms closer than 0.3 Å). Refused (InputError): a missing,
    empty or unreadable file, and fewer than 2 usable structures (one to train, one to validate).
    """
    from morered.io import read_structures, validate

    records = read_structures(path)  # StructureReadError (an InputError) for a file that cannot be read
    positions, numbers, skipped = [], [], []
    for rec in records:
        reason = rec.error or validate(rec.atoms, elements=set(range(1, 119)), max_atoms=10**6)
        if reason is not None:
            skipped.append({"index": rec.index, "name": rec.name, "reason": reason})
            continue
        x = np.asarray(rec.atoms.positions, dtype=np.float64)
        positions.append(x - x.mean(0))
        numbers.append(np.asarray(rec.atoms.numbers))
    for s in skipped[:10]:
        log.warning("skipped structure %d (%s): %s", s["index"], s["name"], s["reason"])
    if len(skipped) > 10:
        log.warning("... and %d more skipped structures", len(skipped) - 10)
    if len(positions) < 2:
        raise InputError(f"{path}: {len(positions)} usable structure(s) of {len(records)}; training needs at "
                         "least 2 (one to train on, one to validate)"
                         + (f"; first skipped: {skipped[0]['name']}: {skipped[0]['reason']}" if skipped else ""))
    return Molecules.from_lists(positions, numbers), skipped


def loader(mols: Molecules, batch_size: int, shuffle: bool, num_workers: int):
    ds = MoleculeDataset(mols)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate, num_workers=num_workers,
        drop_last=False, persistent_workers=num_workers > 0,
    )


# ---------------------------------------------------------------------------- trainer
class RunTimer(Timer):
    """``--max-time`` is the budget of *this* run: Lightning's Timer would restore the time spent
    before a resume and stop the resumed run at once."""

    def load_state_dict(self, state_dict) -> None:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a run killed while saving keeps the
    previous complete ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = str(path)
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class RunClock(Callback):
    """Wall time and runs over all runs of one ``--out`` folder, kept in the checkpoint, so a
    killed run's time counts after a resume even though it never wrote ``summary.json``."""

    def __init__(self):
        self.start = time.time()
        self.before = 0.0  # seconds of earlier runs (from the checkpoint)
        self.runs_before = 0

    def total(self) -> float:
        return self.before + time.time() - self.start

    def state_dict(self):
        return {"wall_seconds": self.total(), "runs": self.runs_before + 1}

    def load_state_dict(self, state_dict) -> None:
        self.before = float(state_dict.get("wall_seconds", 0.0))
        self.runs_before = int(state_dict.get("runs", 0))


class TimedCheckpoint(Callback):
    """Save ``last.ckpt`` every ``seconds`` of wall time (besides every N steps), and at once
    when a stop was requested (SIGTERM / Ctrl-C): a run killed between step checkpoints loses
    at most that much work."""

    def __init__(self, path: Path, seconds: float | None):
        self.path, self.seconds = Path(path), seconds
        self.last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = bool(self.seconds) and time.monotonic() - self.last >= self.seconds
        due = bool(trainer.strategy.broadcast(due, src=0))  # every rank saves together
        if due:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state: resumable
            self.last = time.monotonic()


class StopRequest(Interruptible):
    """First SIGINT/SIGTERM: ask the trainer to stop after the current step (then the
    checkpoint, model and summary are written and the run exits 130); a second Ctrl-C stops at
    once (Lightning saves ``last.ckpt`` on the exception)."""

    def __init__(self):
        super().__init__("this step")
        self.trainer: pl.Trainer | None = None

    def on_request(self, name: str) -> None:
        log.warning("%s: stopping after this step; checkpoint, model and summary will be written "
                    "(Ctrl-C again to stop at once)", name)
        if self.trainer is not None:
            self.trainer.should_stop = True


class _StopCallback(Callback):
    def __init__(self, request: StopRequest):
        self.request = request

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.request.requested:
            trainer.should_stop = True


#: Lightning notes that say nothing to a user of ``morered train``, silenced by their text during
#: ``fit`` only (each is a regular expression matched at the start of the message):
#: - checkpoints of manually optimised modules hold the weights *after* the step (with example code
#:   in every training log): that is what ``last.ckpt`` is for here, resuming where training stood;
#: - with an on-exception checkpoint, ``fit(ckpt_path=None)`` is turned into ``"last"`` with two
#:   warnings ("called without a model", "no last checkpoint available"): ``train`` decides itself
#:   and passes ``last.ckpt`` when it exists, so a fresh run has none by design;
#: - a deprecation inside Lightning's own pytree helper (``LeafSpec``, PyTorch >= 2.9).
QUIET_WARNINGS = (
    "Using ModelCheckpoint with manual optimization",
    r"`\.fit\(ckpt_path=None\)` was called without a model",
    r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint available',
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class _NoAdvert(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger (printed at every ``Trainer``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_lightning_console() -> None:
    """Each Lightning note once, and no advertisement.

    The ``lightning`` umbrella package adds its own console handler to the ``lightning`` logger
    when imported, whatever the application configured, while its ``lightning.pytorch`` part
    leaves messages to the root logger when that has handlers.  With the root configured (the CLI
    does, and so do most applications) every note is printed twice; here they are left to the root
    logger, as ``lightning.pytorch`` intends.  Idempotent.
    """
    light = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for h in list(light.handlers):
            if type(h) is logging.StreamHandler:
                light.removeHandler(h)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvert) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdvert())


def build_trainer(cfg: dict, out: Path, extra_callbacks=()) -> pl.Trainer:
    tr = cfg["trainer"]
    ckpt_dir = out / "checkpoints"
    minutes = tr.get("checkpoint_every_minutes", 5)
    callbacks = [
        *extra_callbacks,
        TimedCheckpoint(ckpt_dir / "last.ckpt", 60.0 * float(minutes) if minutes else None),
        # last.ckpt, rewritten every few steps: resume from here after an interruption
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=int(tr["checkpoint_every_steps"]),
                        save_top_k=1, enable_version_counter=False),
        OnExceptionCheckpoint(dirpath=ckpt_dir, filename="last"),
        EarlyStopping(monitor="val_loss", patience=int(cfg["optim"]["early_stopping_patience"]), mode="min"),
        # on a terminal every 10 steps; in a log file (nohup, CI, cluster jobs) every 500, so that
        # the bar does not flood it
        TQDMProgressBar(refresh_rate=10 if sys.stderr.isatty() else 500),
    ]
    max_time = parse_duration(tr["max_time"])
    if max_time:
        callbacks.append(RunTimer(duration=timedelta(seconds=max_time), interval="step"))
    # a new version folder per run, so that a resumed run does not overwrite the earlier log
    loggers = [CSVLogger(out, name="logs")]
    if tr["tensorboard"]:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="tb", version=0))
    n_proc = int(tr["devices"]) * int(tr["num_nodes"]) if str(tr["devices"]).isdigit() else 2
    strategy = tr["strategy"]
    if strategy == "auto" and n_proc > 1:
        strategy = "ddp"
    return pl.Trainer(
        default_root_dir=out,
        accelerator=tr["accelerator"],
        devices=tr["devices"],
        num_nodes=int(tr["num_nodes"]),
        strategy=strategy,
        precision=tr["precision"],
        max_steps=int(tr["max_steps"]),
        max_epochs=int(tr["max_epochs"]),
        val_check_interval=int(tr["val_every_steps"]),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=int(tr["log_every_steps"]),
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        deterministic=False,
    )


def train(cfg: dict, out: str | Path) -> Path:
    """Train (or resume) the model described by ``cfg`` into folder ``out``.

    Writes ``out/config.yaml`` (resolved), ``out/checkpoints/last.ckpt`` (resume),
    ``out/best.pt`` (EMA weights with the lowest validation loss), ``out/model.pt`` (EMA weights
    at the end) and ``out/logs/version_<k>/metrics.csv`` (one folder per run or resume).  Returns the path of ``best.pt`` (or of
    ``model.pt`` when no validation ran).
    """
    out = Path(out)
    _check_out(out)
    quiet_lightning_console()
    tr = cfg["trainer"]
    if tr["threads"]:
        torch.set_num_threads(int(tr["threads"]))
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    acc = str(tr["accelerator"])
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise OptionError(f"--accelerator {acc}: no CUDA GPU on this machine (use cpu or auto)")
    if acc == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptionError("--accelerator mps: MPS is not available on this machine")

    # 1. data (and for force fields the task), validated before anything is created
    task = None
    if cfg["model_type"] == "forcefield":
        from morered.training.forcefield import build_forcefield_run

        if float((cfg["diffusion"].get("soft_modes") or {}).get("fraction", 0)) > 0:
            raise OptionError("diffusion.soft_modes applies to the diffusion models (jt, ddpm, time), "
                              "not to forcefield (DeNS is its noise option: --dens)")
        task, train_dl, val_dl, info = build_forcefield_run(cfg)
        skipped = []
        log.info("data: %s, %d train / %d val structures", info["name"], info["n_train"], info["n_val"])
    else:
        train_set, val_set, info = load_training_data(cfg)
        log.info("data: %s, %d train / %d val molecules", info["name"], info["n_train"], info["n_val"])
        skipped = info.pop("skipped", [])
        d = cfg["data"]
        train_dl = loader(train_set, int(d["batch_size"]), True, int(d["num_workers"]))
        val_dl = loader(val_set, int(d["batch_size"]), False, int(d["num_workers"]))
        task = DiffusionTask(cfg, info, soft_modes=soft_mode_table(cfg, train_set))

    # from here on, SIGTERM / Ctrl-C stop the run after the current step, writing what is done
    stop = StopRequest()
    with stop:
        return _train(cfg, out, stop, train_dl, val_dl, info, skipped, task)


def _train(cfg, out, stop, train_dl, val_dl, info, skipped, task=None) -> Path:
    # 2. config and the list of skipped structures
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    if skipped:
        with open(out / "skipped.csv.tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["index", "name", "reason"])
            w.writeheader()
            w.writerows(skipped)
        os.replace(out / "skipped.csv.tmp", out / "skipped.csv")
        log.warning("%d structures skipped, reasons in %s", len(skipped), out / "skipped.csv")
    last = out / "checkpoints" / "last.ckpt"
    resuming = last.exists()
    log.info("config written to %s%s", out / "config.yaml", f"; resuming from {last}" if resuming else "")

    # 3. model and task
    if task is None:
        task = DiffusionTask(cfg, info)
    task.export_path = out / "best.pt"
    if cfg.get("init_from") and not resuming:
        start = init_from_model(task, cfg["init_from"])
        log.info("warm start from %s (its %s model, step %s, val loss %s)%s", cfg["init_from"],
                 start.get("model_type"), start.get("global_step"), start.get("val_loss"),
                 (f"; freshly initialised: {', '.join(start['fresh'])}" if start["fresh"] else "")
                 + (f"; grown from {start['grown']} (" + ("new blocks start as identity maps" if "blocks" in start["grown"]
                    else "new channels start unread by the old ones") + ", same function)" if start["grown"] else ""))
    n_par = sum(p.numel() for p in task.model.parameters())
    log.info("model: %s, %d parameters", cfg["model_type"], n_par)

    # 4. trainer, 5. fit
    clock = RunClock()
    try:
        trainer = build_trainer(cfg, out, [clock, _StopCallback(stop)])
    except Exception as err:  # Lightning: unknown accelerator, no GPU, bad precision, ...
        raise OptionError(f"trainer options: {err}") from None
    stop.trainer = trainer
    t0 = time.time()
    try:
        with warnings.catch_warnings():
            for text in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=text)
            trainer.fit(task, train_dl, val_dl, ckpt_path=str(last) if resuming else None)
    except SystemExit:
        # Lightning ends a run stopped by SIGTERM (SIGTERMException) or a second Ctrl-C
        # (sys.exit(1)) this way, after OnExceptionCheckpoint saved last.ckpt
        stop.requested = True
    except (KeyError, RuntimeError, EOFError, OSError) as err:
        if resuming and trainer.global_step == 0:
            raise ModelError(f"cannot resume from {last}: {str(err).splitlines()[0][:200]} (delete it to "
                             "start over)") from None
        raise
    wall = time.time() - t0
    # a collective call (it ends in a barrier): every rank must make it, only rank 0 writes
    trainer.save_checkpoint(last, weights_only=False)  # the full state: resumable
    if trainer.is_global_zero:
        save_model(task, out / "model.pt")
        prev_path = out / "summary.json"
        if resuming and clock.runs_before == 0 and prev_path.exists():  # a checkpoint without the clock
            previous = json.loads(prev_path.read_text())
            clock.before = float(previous.get("wall_seconds_total", previous.get("wall_seconds_this_run", 0.0)))
            clock.runs_before = int(previous.get("runs", 1))
        summary = {
            "global_step": int(trainer.global_step),
            "wall_seconds_this_run": round(wall, 1),
            "wall_seconds_total": round(clock.total(), 1),
            "runs": clock.runs_before + 1,
            "best_val_loss": None if task.best_val == float("inf") else task.best_val,
            "skipped_batches": int(task.n_skipped),
            "parameters": n_par,
            "dataset": info,
        }
        if stop.requested:
            summary["interrupted"] = True
        _write_text(out / "summary.json", json.dumps(summary, indent=2))
    if stop.requested:
        raise Interrupted(f"training stopped at step {trainer.global_step}: checkpoint, model and summary written; "
                          f"rerun the same command to resume from {last}")
    best = out / "best.pt"
    return best if best.exists() else out / "model.pt"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_out(out: Path) -> None:
    """OutputError when ``out`` cannot be the run folder: a file, or not creatable/writable."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: cannot write to {existing} (permission denied)")
    if (out / "checkpoints").exists() and not (out / "checkpoints").is_dir():
        raise OutputError(f"--out {out}: {out / 'checkpoints'} is a file, not a folder")