"""`morered train`: config -> data -> model -> task -> trainer -> fit, resuming from the last
checkpoint in ``--out`` when there is one."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, OnExceptionCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from morered.data.molecules import MoleculeDataset, Molecules
from morered.training.config import parse_duration
from morered.training.task import DiffusionTask, save_model

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
    else:
        from morered.data.structures import load_structures, split_structures

        mols = load_structures(d["source"])
        split = split_structures(mols, d["split_file"], d["val_fraction"], d["test_fraction"], cfg["seed"])
        train, val = mols.subset(split["train"]), mols.subset(split["val"])
        name = str(d["source"])
    if d["limit_train"]:
        train = train.subset(np.arange(min(int(d["limit_train"]), len(train))))
    if d["limit_val"]:
        val = val.subset(np.arange(min(int(d["limit_val"]), len(val))))
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"need at least one training and one validation structure (got {len(train)}, {len(val)})")
    info = {
        "name": name,
        "elements": sorted(int(z) for z in np.unique(train.numbers)),
        "max_atoms": int(train.n_atoms().max()),
        "n_train": len(train),
        "n_val": len(val),
    }
    return train, val, info


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


def build_trainer(cfg: dict, out: Path) -> pl.Trainer:
    tr = cfg["trainer"]
    ckpt_dir = out / "checkpoints"
    callbacks = [
        # last.ckpt, rewritten every few steps: resume from here after an interruption
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=int(tr["checkpoint_every_steps"]),
                        save_top_k=1, enable_version_counter=False),
        OnExceptionCheckpoint(dirpath=ckpt_dir, filename="last"),
        EarlyStopping(monitor="val_loss", patience=int(cfg["optim"]["early_stopping_patience"]), mode="min"),
        TQDMProgressBar(refresh_rate=10),
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
    out.mkdir(parents=True, exist_ok=True)
    tr = cfg["trainer"]
    if tr["threads"]:
        torch.set_num_threads(int(tr["threads"]))
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    # 1. config
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    last = out / "checkpoints" / "last.ckpt"
    resuming = last.exists()
    log.info("config written to %s%s", out / "config.yaml", f"; resuming from {last}" if resuming else "")

    # 2. data, 3. model and task
    if cfg["model_type"] == "forcefield":
        from morered.training.forcefield import build_forcefield_run

        task, train_dl, val_dl, info = build_forcefield_run(cfg)
        log.info("data: %s, %d train / %d val structures", info["name"], info["n_train"], info["n_val"])
    else:
        train_set, val_set, info = load_training_data(cfg)
        log.info("data: %s, %d train / %d val molecules", info["name"], info["n_train"], info["n_val"])
        d = cfg["data"]
        train_dl = loader(train_set, int(d["batch_size"]), True, int(d["num_workers"]))
        val_dl = loader(val_set, int(d["batch_size"]), False, int(d["num_workers"]))
        task = DiffusionTask(cfg, info)
    task.export_path = out / "best.pt"
    n_par = sum(p.numel() for p in task.model.parameters())
    log.info("model: %s, %d parameters", cfg["model_type"], n_par)

    # 4. trainer, 5. fit
    trainer = build_trainer(cfg, out)
    t0 = time.time()
    trainer.fit(task, train_dl, val_dl, ckpt_path=str(last) if resuming else None)
    wall = time.time() - t0
    # a collective call (it ends in a barrier): every rank must make it, only rank 0 writes
    trainer.save_checkpoint(last)
    if trainer.is_global_zero:
        save_model(task, out / "model.pt")
        prev_path = out / "summary.json"
        previous = json.loads(prev_path.read_text()) if resuming and prev_path.exists() else {}
        summary = {
            "global_step": int(trainer.global_step),
            "wall_seconds_this_run": round(wall, 1),
            "wall_seconds_total": round(wall + float(previous.get("wall_seconds_total", previous.get("wall_seconds_this_run", 0.0))), 1),
            "runs": int(previous.get("runs", 1 if previous else 0)) + 1,
            "best_val_loss": None if task.best_val == float("inf") else task.best_val,
            "skipped_batches": int(task.n_skipped),
            "parameters": n_par,
            "dataset": info,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    best = out / "best.pt"
    return best if best.exists() else out / "model.pt"
