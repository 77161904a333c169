"""Training a PaiNN force field (``morered train --model forcefield [--dens]``) on GFN2-xTB labels.

The machinery (EMA, skipped batches, plateau LR, early stopping, checkpoints, resume) is the
shared :class:`~morered.training.base.TrainingTask`; only the losses and the data differ.
Validation always uses the plain force-field loss on uncorrupted structures, so that runs with
and without DeNS are compared on the same numbers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from morered import properties as P
from morered.errors import InputError, OptionError
from morered.forcefield.dens import forcefield_losses
from morered.forcefield.labels import LabelDataset, Labels
from morered.forcefield.model import build_forcefield, fit_element_energies
from morered.training.base import TrainingTask

log = logging.getLogger("morered.train")


def forcefield_args_from_config(cfg: dict) -> dict:
    m, f = cfg["model"], cfg["forcefield"]
    return {"representation": dict(m["representation"]), "head_layers": int(f["head_layers"]),
            "dens": bool(f["dens"]), "graph": m["graph"], "graph_cutoff": m["graph_cutoff"]}


def load_label_data(cfg: dict) -> tuple[Labels, Labels, dict]:
    """(train, val, dataset_info) from the label file ``forcefield.labels`` (``morered label``)."""
    f, d = cfg["forcefield"], cfg["data"]
    if not f["labels"]:
        raise OptionError("forcefield.labels is not set: make labels with `morered label` and pass the file it "
                          "prints with --set forcefield.labels=PATH")
    labels = Labels.load(f["labels"])
    cap = f.get("max_force")
    if cap is not None and not float(cap) > 0:
        raise OptionError(f"forcefield.max_force must be a positive force in eV/Å or null, not {cap!r}")
    left_out = {}
    for split in ("train", "val"):
        every, kept = labels.where(split), labels.where(split, max_force=cap)
        if len(kept) < len(every):
            gone = np.setdiff1d(every, kept)
            kinds, counts = np.unique(labels.kind[gone], return_counts=True)
            left_out[split] = {"n": int(len(gone)), "of": int(len(every)),
                               "by_kind": {str(k): int(c) for k, c in zip(kinds, counts)}}
            log.warning("forcefield.max_force %s eV/Å: %d of %d %s structures left out (largest atomic force "
                        "above the cap; by kind: %s)", cap, len(gone), len(every), split,
                        ", ".join(f"{k} {c}" for k, c in zip(kinds, counts)))
    train, val = labels.subset(labels.where("train", max_force=cap)), labels.subset(labels.where("val", max_force=cap))
    if d["limit_train"]:
        train = train.subset(np.arange(min(int(d["limit_train"]), len(train))))
    if d["limit_val"]:
        val = val.subset(np.arange(min(int(d["limit_val"]), len(val))))
    if len(train) == 0 or len(val) == 0:
        raise InputError(f"need training and validation labels (got {len(train)}, {len(val)})")
    info = {"name": f"labels:{labels.settings.get('method', 'GFN2-xTB')}", "labels": str(f["labels"]),
            "label_settings": labels.settings, "elements": sorted(int(z) for z in np.unique(train.numbers)),
            "max_atoms": int(train.n_atoms().max()), "n_train": len(train), "n_val": len(val),
            "max_force": None if cap is None else float(cap), "left_out_max_force": left_out}
    return train, val, info


class ForceFieldTask(TrainingTask):
    """Energy + force loss (weights ``forcefield.weights``), DeNS when ``forcefield.dens``."""

    def __init__(self, config: dict, dataset_info: dict | None = None, train_labels: Labels | None = None):
        super().__init__(config, dataset_info)
        self.model_args = forcefield_args_from_config(config)
        self.model = build_forcefield(self.model_args)
        if train_labels is not None:  # on resume the fitted buffers come back with the checkpoint
            table = fit_element_energies(train_labels.numbers, train_labels.offsets, train_labels.energy,
                                         len(self.model.element_energy) - 1)
            self.model.element_energy.copy_(torch.as_tensor(table))
            self.model.scale.fill_(float(np.sqrt(np.mean(train_labels.forces**2))))
        self.init_ema()
        f = config["forcefield"]
        self.weights = {k: float(v) for k, v in f["weights"].items()}
        self.dens = {k: float(f[k]) for k in ("p", "sigma", "fraction")} if f["dens"] else None

    def losses(self, model, batch, generator=None):
        if model is self.ema or not self.training:  # validation: plain loss, no corruption
            with torch.inference_mode(False), torch.enable_grad():
                batch = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
                out = forcefield_losses(model, batch, self.weights, None, generator, create_graph=False)
            return {k: v.detach() for k, v in out.items()}
        return forcefield_losses(model, batch, self.weights, self.dens, generator, create_graph=True)

    def export_dict(self, val_loss: float | None = None) -> dict:
        return {
            "format": "morered-model/1",
            "model_type": "forcefield",
            "model_args": self.model_args,
            "config": self.config,
            "dataset_info": self.dataset_info,
            "state_dict": self.ema_state_dict(),
            "global_step": int(self.global_step),
            "val_loss": self.best_or(val_loss),
            "skipped_batches": int(self.n_skipped),
        }


def label_loader(labels: Labels, batch_size: int, shuffle: bool, num_workers: int):
    ds = LabelDataset(labels)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate,
                                       num_workers=num_workers, persistent_workers=num_workers > 0)


def build_forcefield_run(cfg: dict):
    """(task, train loader, val loader, info) for ``train``."""
    train, val, info = load_label_data(cfg)
    d = cfg["data"]
    task = ForceFieldTask(cfg, info, train)
    return (task, label_loader(train, int(d["batch_size"]), True, int(d["num_workers"])),
            label_loader(val, int(d["batch_size"]), False, int(d["num_workers"])), info)


__all__ = ["ForceFieldTask", "build_forcefield_run", "load_label_data", "P"]
