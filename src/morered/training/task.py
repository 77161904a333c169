"""The training task: diffusion losses, EMA weights, skipped batches, checkpoints of plain data."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import torch

from morered import properties as P
from morered.diffusion.schedule import NoiseSchedule, diffuse
from morered.nn.model import build_model
from morered.training.ema import ema_decay, update_ema

#: give up after this many skipped batches in a row (every batch bad = diverged or bad data)
MAX_CONSECUTIVE_SKIPS = 100
LOSS_TERMS = {"jt": ("noise", "time"), "ddpm": ("noise",), "time": ("time",)}


def model_args_from_config(cfg: dict) -> dict:
    m = cfg["model"]
    return {
        "representation": dict(m["representation"]),
        "noise_head": cfg["model_type"] in ("jt", "ddpm"),
        "time_head": cfg["model_type"] in ("jt", "time"),
        "head_layers": m["head_layers"],
        "graph": m["graph"],
        "graph_cutoff": m["graph_cutoff"],
    }


def sample_t(n: int, T: int, low_fraction: float, low_max: int, generator=None) -> torch.Tensor:
    """Steps in 1..T: uniform, or with probability ``low_fraction`` uniform in 1..low_max."""
    t = torch.randint(1, T + 1, (n,), generator=generator)
    if low_fraction > 0:
        low = torch.rand(n, generator=generator) < low_fraction
        t = torch.where(low, torch.randint(1, min(low_max, T) + 1, (n,), generator=generator), t)
    return t


class DiffusionTask(pl.LightningModule):
    """Trains a :class:`~morered.nn.model.DiffusionModel` on equilibrium structures.

    Losses (SPEC §5): L_eps = mean ||eps - eps_theta(x_t, t)||^2 over atoms and coordinates;
    L_t = mean (t/T - t_phi(x_t)_atom)^2 over atoms; JT: w_eps L_eps + w_t L_t.
    Manual optimisation so that a bad batch can be skipped on every DDP rank at once.
    """

    def __init__(self, config: dict, dataset_info: dict | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config, "dataset_info": dataset_info or {}})
        self.config = config
        self.dataset_info = dataset_info or {}
        self.automatic_optimization = False
        self.model_args = model_args_from_config(config)
        self.model = build_model(self.model_args)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.schedule = NoiseSchedule.from_dict(config["schedule"])
        self.terms = LOSS_TERMS[config["model_type"]]
        self.register_buffer("n_skipped", torch.zeros((), dtype=torch.long))
        #: EMA updates so far (drives the warm-up of the EMA decay; saved in checkpoints)
        self.register_buffer("n_ema_updates", torch.zeros((), dtype=torch.long))
        self.best_val = math.inf
        self.consecutive_skips = 0

    # ---------------------------------------------------------------- losses
    def losses(self, model, batch, generator=None) -> dict[str, torch.Tensor]:
        d = self.config["diffusion"]
        n_mol = len(batch[P.n_atoms])
        t = sample_t(n_mol, self.schedule.T, float(d["low_t_fraction"]), int(d["low_t_max"]), generator)
        t = t.to(self.device)
        xt, eps = diffuse(batch[P.R], t, batch[P.idx_m], self.schedule, generator)
        noisy = {**batch, P.R: xt}
        t_norm = t.to(xt.dtype) / self.schedule.T
        cond = None if (self.config["model_type"] == "jt" and d["jt_condition"] == "predicted") else t_norm
        out = model(noisy, cond)
        losses = {}
        if "noise" in self.terms:
            losses["noise"] = ((out[P.eps_pred] - eps) ** 2).sum(-1).mean() / 3.0
        if "time" in self.terms:
            losses["time"] = ((out[P.t_pred_atom] - t_norm[batch[P.idx_m]]) ** 2).mean()
            losses["time_mae_steps"] = (
                (out[P.t_pred].detach().clamp(0, 1) - t_norm).abs().mean() * self.schedule.T
            )
        w = self.config["loss"]
        if self.config["model_type"] == "jt":
            losses["loss"] = w["noise_weight"] * losses["noise"] + w["time_weight"] * losses["time"]
        else:
            losses["loss"] = losses[self.terms[0]]
        return losses

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        o = self.config["optim"]
        losses = self.losses(self.model, batch)
        loss = losses["loss"]
        value = float(loss.detach())
        bad = not math.isfinite(value) or value > float(o["skip_loss_above"])
        # decide on every rank *before* backward: under DDP, backward all-reduces the gradients,
        # and a rank that skipped it would leave the others waiting
        bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            # gradients are identical on all ranks after the all-reduce: so is this decision
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(o["grad_clip"]))
            bad = not bool(torch.isfinite(norm))
        if bad:
            opt.zero_grad(set_to_none=True)
            self.n_skipped += 1
            self.consecutive_skips += 1
            self.print(f"skipped batch {batch_idx} at step {self.global_step}: loss {value:.3g}")
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(f"{self.consecutive_skips} batches in a row had a non-finite or huge loss: "
                                   "the model has diverged (lower optim.lr?) or the data hold NaNs")
        else:
            self.consecutive_skips = 0
            opt.step()
            self.update_ema()
        self.log("skipped_batches", self.n_skipped.float(), prog_bar=True, batch_size=1)
        if not bad:
            bs = len(batch[P.n_atoms])
            for k, v in losses.items():
                self.log(f"train_{k}", v.detach(), prog_bar=(k == "loss"), batch_size=bs)
            self.log("lr", opt.param_groups[0]["lr"], batch_size=1)

    def on_train_start(self):
        # seed_everything gives every DDP rank the same seed: draw different t and noise per rank
        if self.trainer.world_size > 1:
            torch.manual_seed(int(self.config["seed"]) * 1000 + self.global_rank + 1)

    def update_ema(self):
        o = self.config["optim"]
        decay = ema_decay(int(self.n_ema_updates), float(o["ema_decay"]), bool(o.get("ema_warmup", True)))
        update_ema(self.ema, self.model, decay)
        self.n_ema_updates += 1

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx):
        # the same t and noise for the same validation batch at every check: comparable losses
        g = torch.Generator().manual_seed(1000 + batch_idx)
        losses = self.losses(self.ema, batch, generator=g)
        bs = len(batch[P.n_atoms])
        for k, v in losses.items():
            self.log(f"val_{k}", v, batch_size=bs, sync_dist=True, prog_bar=(k == "loss"))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        val = self.trainer.callback_metrics.get("val_loss")
        if val is None:
            return
        sch = self.lr_schedulers()
        sch.step(float(val))
        if float(val) < self.best_val:
            self.best_val = float(val)
            out = getattr(self, "export_path", None)
            if out is not None and self.trainer.is_global_zero:
                save_model(self, out, val_loss=float(val))

    def configure_optimizers(self):
        o = self.config["optim"]
        opt = torch.optim.AdamW(self.model.parameters(), lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        sch = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=float(o["lr_factor"]), patience=int(o["lr_patience"]), min_lr=float(o["min_lr"])
        )
        # stepped by hand in on_validation_epoch_end (manual optimisation)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["best_val"] = self.best_val
        checkpoint["morered"] = export_dict(self)

    def on_load_checkpoint(self, checkpoint):
        self.best_val = float(checkpoint.get("best_val", math.inf))


def init_from_model(task: DiffusionTask, path) -> dict:
    """Warm start: copy the (EMA) weights of a model file into ``task.model`` and ``task.ema``.

    The optimizer, the learning-rate schedule and the step count start afresh, so a model can be
    improved stage after stage on any machine from its shipped weights alone.  The architecture
    (model arguments) must match the config's.  Returns the file's contents (without weights).
    """
    d = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(d, dict) or "state_dict" not in d or "model_args" not in d:
        raise ValueError(f"{path}: not a morered model file (no model_args / state_dict)")
    if d["model_args"] != task.model_args:
        raise ValueError(f"{path}: its network {d['model_args']} differs from the config's {task.model_args}; "
                         "set model.* to match it")
    task.model.load_state_dict(d["state_dict"])
    task.ema.load_state_dict(d["state_dict"])
    return {k: v for k, v in d.items() if k != "state_dict"}


def export_dict(task: DiffusionTask, val_loss: float | None = None) -> dict:
    """Everything needed to rebuild the EMA model, as plain data (loads with weights_only=True)."""
    return {
        "format": "morered-model/1",
        "model_type": task.config["model_type"],
        "model_args": task.model_args,
        "schedule": task.schedule.to_dict(),
        "config": task.config,
        "dataset_info": task.dataset_info,
        "state_dict": {k: v.detach().cpu().clone() for k, v in task.ema.state_dict().items()},
        "global_step": int(task.global_step),
        "val_loss": val_loss if val_loss is not None else (None if math.isinf(task.best_val) else task.best_val),
        "skipped_batches": int(task.n_skipped),
    }


def save_model(task: DiffusionTask, path, val_loss: float | None = None) -> None:
    import os

    tmp = f"{path}.tmp"
    torch.save(export_dict(task, val_loss), tmp)
    os.replace(tmp, path)
