"""The diffusion training task: diffusion losses on top of the shared machinery of
:class:`morered.training.base.TrainingTask` (EMA weights, skipped batches, checkpoints of plain data)."""

from __future__ import annotations

import torch

from morered import properties as P
from morered.diffusion.schedule import NoiseSchedule, diffuse
from morered.nn.model import build_model
from morered.training.base import MAX_CONSECUTIVE_SKIPS, TrainingTask, save_model  # noqa: F401 (re-exported)

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


class DiffusionTask(TrainingTask):
    """Trains a :class:`~morered.nn.model.DiffusionModel` on equilibrium structures.

    Losses (SPEC §5): L_eps = mean ||eps - eps_theta(x_t, t)||^2 over atoms and coordinates;
    L_t = mean (t/T - t_phi(x_t)_atom)^2 over atoms; JT: w_eps L_eps + w_t L_t.
    With ``diffusion.soft_modes.fraction`` > 0 and a :class:`~morered.data.soft_modes.SoftModes`
    table, that share of the training molecules with t <= ``t_max`` get normal-mode-shaped noise
    of the same size instead of isotropic noise (validation stays isotropic).
    The training loop, EMA, validation, LR schedule and checkpoints are the base class's.
    """

    def __init__(self, config: dict, dataset_info: dict | None = None, soft_modes=None):
        super().__init__(config, dataset_info)
        self.soft_modes = soft_modes  # SoftModes table (diffusion.soft_modes) or None
        self.model_args = model_args_from_config(config)
        self.model = build_model(self.model_args)
        self.init_ema()
        self.schedule = NoiseSchedule.from_dict(config["schedule"])
        self.terms = LOSS_TERMS[config["model_type"]]

    # ---------------------------------------------------------------- losses
    def losses(self, model, batch, generator=None) -> dict[str, torch.Tensor]:
        d = self.config["diffusion"]
        n_mol = len(batch[P.n_atoms])
        t = sample_t(n_mol, self.schedule.T, float(d["low_t_fraction"]), int(d["low_t_max"]), generator)
        t = t.to(self.device)
        noise = mask = None
        sm = d.get("soft_modes") or {}
        if self.soft_modes is not None and generator is None and float(sm.get("fraction", 0)) > 0:
            # training only: validation keeps isotropic noise, so losses stay comparable across stages
            select = (torch.rand(n_mol) < float(sm["fraction"])) & (t.cpu() <= int(sm["t_max"]))
            noise, used = self.soft_modes.noise(batch[P.mol_id], batch[P.n_atoms], select)
            mask = used.to(self.device)[batch[P.idx_m]]
        xt, eps = diffuse(batch[P.R], t, batch[P.idx_m], self.schedule, generator, noise, mask)
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

    def export_dict(self, val_loss: float | None = None) -> dict:
        return export_dict(self, val_loss)

    def skip_limit(self) -> int:
        return MAX_CONSECUTIVE_SKIPS  # this module's name (re-exported from base) stays the knob


#: model arguments that only say which heads a network has: a warm start may differ in them
HEAD_FLAGS = ("noise_head", "time_head")


def init_from_model(task: DiffusionTask, path) -> dict:
    """Warm start: copy the (EMA) weights of a model file into ``task.model`` and ``task.ema``.

    The optimizer, the learning-rate schedule and the step count start afresh, so a model can be
    improved stage after stage on any machine from its shipped weights alone.  The representation
    (every model argument except which heads there are) must match the config's.  The heads may
    differ: a noise-only (DDPM) or time-only network can start from a JT model's representation
    and its matching head; a head the file lacks starts from its fresh initialisation (listed
    under ``"fresh"`` in the returned dict).  A PaiNN representation may also be *deeper* than the
    file's (``model.representation.n_interactions`` larger, all else equal): the file's blocks are
    loaded and the new ones appended as identity maps (:meth:`PaiNN.load_shallower`), so training
    continues from the same function with more capacity (``"grown"``: blocks before -> after).
    Or it may be *wider* (``model.representation.n_features`` larger, all else equal): every layer
    of the file sits in the first channels of the wider one and the weights from the new channels
    into the old ones are zero (:func:`morered.nn.widen.load_narrower`; ``"grown"``: features
    before -> after).  One of the two per warm start.
    Returns the file's contents (without weights).
    """
    d = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(d, dict) or "state_dict" not in d or "model_args" not in d:
        raise ValueError(f"{path}: not a morered model file (no model_args / state_dict)")
    mine = {k: v for k, v in task.model_args.items() if k not in HEAD_FLAGS}
    theirs = {k: v for k, v in d["model_args"].items() if k not in HEAD_FLAGS}
    n_from, n_to = _depths(mine, theirs)
    f_from, f_to = _grown(mine, theirs, "n_features")
    if mine != theirs and n_from is None and f_from is None:
        raise ValueError(f"{path}: its network {d['model_args']} differs from the config's {task.model_args}; "
                         "set model.* to match it (model.representation.n_interactions or n_features may be "
                         "larger, one of them per warm start)")
    if f_from:
        return _init_wider(task, d, f_from, f_to)
    target = task.model.state_dict()
    rep = "representation."
    weights = {k: v for k, v in d["state_dict"].items() if k in target and not (n_from and k.startswith(rep))}
    fresh = sorted({k.split(".")[0] for k in target if k not in weights and not (n_from and k.startswith(rep))})
    task.model.load_state_dict(weights, strict=False)
    if n_from:
        task.model.representation.load_shallower(
            {k[len(rep):]: v for k, v in d["state_dict"].items() if k.startswith(rep)}, n_from)
        task.ema.load_state_dict(task.model.state_dict())
    else:
        task.ema.load_state_dict(weights, strict=False)
    return {**{k: v for k, v in d.items() if k != "state_dict"}, "fresh": fresh,
            "grown": f"{n_from} -> {n_to} blocks" if n_from else None}


def _depths(mine: dict, theirs: dict) -> tuple[int | None, int | None]:
    """``(blocks in the file, blocks in the config)`` when the two networks differ only in a
    larger number of PaiNN blocks in the config, else ``(None, None)``."""
    return _grown(mine, theirs, "n_interactions")


def _init_wider(task, d: dict, f_from: int, f_to: int) -> dict:
    """Widening warm start (:func:`morered.nn.widen.load_narrower`): the file's network, rebuilt
    with its own arguments, is loaded into the config's wider one with the same function."""
    from morered.nn.widen import check_widening, load_narrower

    narrow = type(task.model)(**d["model_args"])  # DiffusionModel or ForceField, as the file says
    narrow.load_state_dict(d["state_dict"])
    check_widening(task.model)
    load_narrower(task.model, narrow.state_dict(), narrow)
    task.ema.load_state_dict(task.model.state_dict())
    own = task.model.state_dict()
    fresh = sorted({k.split(".")[0] for k in own if k not in d["state_dict"]})
    return {**{k: v for k, v in d.items() if k != "state_dict"}, "fresh": fresh,
            "grown": f"{f_from} -> {f_to} features"}


def _grown(mine: dict, theirs: dict, field: str) -> tuple[int | None, int | None]:
    """``(file's value, config's value)`` of PaiNN's ``field`` when the two networks differ only
    in a larger value of it in the config, else ``(None, None)``."""
    a, b = dict(mine.get("representation") or {}), dict(theirs.get("representation") or {})
    n_to, n_from = a.pop(field, None), b.pop(field, None)
    same_rest = {k: v for k, v in mine.items() if k != "representation"} == \
        {k: v for k, v in theirs.items() if k != "representation"}
    if (a.get("name", "painn") == "painn" and a == b and same_rest and isinstance(n_from, int)
            and isinstance(n_to, int) and n_from < n_to):
        return n_from, n_to
    return None, None


def export_dict(task: DiffusionTask, val_loss: float | None = None) -> dict:
    """Everything needed to rebuild the EMA model, as plain data (loads with weights_only=True)."""
    return {
        "format": "morered-model/1",
        "model_type": task.config["model_type"],
        "model_args": task.model_args,
        "schedule": task.schedule.to_dict(),
        "config": task.config,
        "dataset_info": task.dataset_info,
        "state_dict": task.ema_state_dict(),
        "global_step": int(task.global_step),
        "val_loss": task.best_or(val_loss),
        "skipped_batches": int(task.n_skipped),
    }
