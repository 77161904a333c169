"""Training machinery every model here shares: EMA weights with warm-up, skipped batches (on every
DDP rank together), a plateau or cosine learning-rate schedule, the best-validation export and checkpoints
of plain data.

A subclass builds ``self.model`` and ``self.model_args`` and implements
:meth:`TrainingTask.losses` (``{"loss": ..., other terms}``) and :meth:`TrainingTask.export_dict`.
"""

from __future__ import annotations

import copy
import math
import os

import lightning.pytorch as pl
import torch

from morered import properties as P
from morered.training.ema import ema_decay, update_ema

#: give up after this many skipped batches in a row (every batch bad = diverged or bad data)
MAX_CONSECUTIVE_SKIPS = 100


class TrainingTask(pl.LightningModule):
    """Manual optimisation so that a bad batch can be skipped on every DDP rank at once."""

    def __init__(self, config: dict, dataset_info: dict | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config, "dataset_info": dataset_info or {}})
        self.config = config
        self.dataset_info = dataset_info or {}
        self.automatic_optimization = False
        self.register_buffer("n_skipped", torch.zeros((), dtype=torch.long))
        #: EMA updates so far (drives the warm-up of the EMA decay; saved in checkpoints)
        self.register_buffer("n_ema_updates", torch.zeros((), dtype=torch.long))
        self.best_val = math.inf
        self.consecutive_skips = 0

    def init_ema(self) -> None:
        """Call once ``self.model`` is built (and its buffers set)."""
        self.ema = copy.deepcopy(self.model).requires_grad_(False)

    # ---------------------------------------------------------------- to implement
    def losses(self, model, batch, generator=None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export_dict(self, val_loss: float | None = None) -> dict:
        raise NotImplementedError

    def skip_limit(self) -> int:
        """Skipped batches in a row after which training stops."""
        return MAX_CONSECUTIVE_SKIPS

    def batch_size_of(self, batch) -> int:
        return len(batch[P.n_atoms])

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
            if self.consecutive_skips >= self.skip_limit():
                raise RuntimeError(f"{self.consecutive_skips} batches in a row had a non-finite or huge loss: "
                                   "the model has diverged (lower optim.lr?) or the data hold NaNs")
        else:
            self.consecutive_skips = 0
            if o.get("schedule", "plateau") == "cosine":
                lr = cosine_lr(self.global_step, int(self.config["trainer"]["max_steps"]), float(o["lr"]),
                               float(o["min_lr"]))
                for group in opt.param_groups:
                    group["lr"] = lr
            opt.step()
            self.update_ema()
        self.log("skipped_batches", self.n_skipped.float(), prog_bar=True, batch_size=1)
        if not bad:
            bs = self.batch_size_of(batch)
            for k, v in losses.items():
                self.log(f"train_{k}", v.detach(), prog_bar=(k == "loss"), batch_size=bs)
            self.log("lr", opt.param_groups[0]["lr"], batch_size=1)

    def on_train_start(self):
        # seed_everything gives every DDP rank the same seed: draw different random numbers per rank
        if self.trainer.world_size > 1:
            torch.manual_seed(int(self.config["seed"]) * 1000 + self.global_rank + 1)

    def update_ema(self):
        o = self.config["optim"]
        decay = ema_decay(int(self.n_ema_updates), float(o["ema_decay"]), bool(o.get("ema_warmup", True)))
        update_ema(self.ema, self.model, decay)
        self.n_ema_updates += 1

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx):
        # the same random numbers for the same validation batch at every check: comparable losses
        g = torch.Generator().manual_seed(1000 + batch_idx)
        losses = self.losses(self.ema, batch, generator=g)
        bs = self.batch_size_of(batch)
        for k, v in losses.items():
            self.log(f"val_{k}", v, batch_size=bs, sync_dist=True, prog_bar=(k == "loss"))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        val = self.trainer.callback_metrics.get("val_loss")
        if val is None:
            return
        sch = self.lr_schedulers()
        if sch is not None:  # plateau; the cosine schedule is set per step in training_step
            sch.step(float(val))
        if float(val) < self.best_val:
            self.best_val = float(val)
            out = getattr(self, "export_path", None)
            if out is not None and self.trainer.is_global_zero:
                save_model(self, out, val_loss=float(val))

    def configure_optimizers(self):
        o = self.config["optim"]
        opt = torch.optim.AdamW(self.model.parameters(), lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        if o.get("schedule", "plateau") == "cosine":
            return {"optimizer": opt}
        sch = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=float(o["lr_factor"]), patience=int(o["lr_patience"]), min_lr=float(o["min_lr"])
        )
        # stepped by hand in on_validation_epoch_end (manual optimisation)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["best_val"] = self.best_val
        checkpoint["morered"] = self.export_dict()

    def on_load_checkpoint(self, checkpoint):
        self.best_val = float(checkpoint.get("best_val", math.inf))

    # ---------------------------------------------------------------- export helpers
    def ema_state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.ema.state_dict().items()}

    def best_or(self, val_loss: float | None):
        return val_loss if val_loss is not None else (None if math.isinf(self.best_val) else self.best_val)


def cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``: ``lr`` at the first step,
    half-cosine down to ``min_lr`` at the last, ``min_lr`` beyond it."""
    if total <= 1:
        return lr if step <= 0 else min_lr
    f = min(max(step, 0) / (total - 1), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * f))


def save_model(task: TrainingTask, path, val_loss: float | None = None) -> None:
    """Write the task's EMA model as plain data (loads with ``weights_only=True``), atomically."""
    tmp = f"{path}.tmp"
    torch.save(task.export_dict(val_loss), tmp)
    os.replace(tmp, path)
