"""Loading trained models: exported ``.pt`` files, Lightning ``.ckpt`` files, and the models that
ship inside the package (``src/morered/models``)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from morered.diffusion.schedule import NoiseSchedule
from morered.errors import ModelError, OptionError
from morered.nn.model import NoiseAndTime, build_model

#: the shipped models by name
PRETRAINED = {"jt": "jt.pt", "ddpm": "ddpm.pt", "time": "time.pt"}
#: shipped force fields (not diffusion models; :class:`morered.calculators.ForceField` loads them)
FORCEFIELDS = ("mlff", "mlff-dens")


def _forcefield_error(what: str) -> ModelError:
    return ModelError(f"{what} is a force field (energies and forces, trained on GFN2-xTB labels), not a "
                      f"diffusion model: relax with it through morered.calculators.ForceField and an ASE "
                      f"optimizer (or ForceField(...).relax(list_of_atoms)), or compare it with "
                      f"`morered benchmark relax --methods jt,mlff`")


@dataclass
class LoadedModel:
    """A network ready for the samplers, with what it was trained on."""

    model: torch.nn.Module
    schedule: NoiseSchedule
    model_type: str  # jt | ddpm | time | pair
    elements: set[int]
    max_atoms: int  # largest molecule seen in training
    source: str
    max_distance: float | None = None  # largest interatomic distance seen in training (Å), if stored

    @property
    def has_time(self) -> bool:
        return self.model_type in ("jt", "time", "pair")

    @property
    def has_noise(self) -> bool:
        return self.model_type in ("jt", "ddpm", "pair")


def pretrained_path(name: str) -> Path:
    if name not in PRETRAINED:
        raise ModelError(f"no shipped model {name!r}; shipped: {sorted(PRETRAINED)}")
    path = Path(str(resources.files("morered.models").joinpath(PRETRAINED[name])))
    if not path.exists():
        raise ModelError(f"the shipped model {name!r} is missing from the installation ({path})")
    return path


def load_model(path_or_name: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model: a shipped name (``jt``, ``ddpm``, ``time``), an exported ``.pt`` or a
    training ``.ckpt`` (its EMA weights).  Loaded with ``weights_only=True``: no code is unpickled."""
    p = str(path_or_name)
    if p in FORCEFIELDS and not Path(p).exists():
        raise _forcefield_error(f"the shipped model {p!r}")
    path = pretrained_path(p) if p in PRETRAINED and not Path(p).exists() else Path(p)
    if path.is_dir():
        raise ModelError(f"model {path} is a directory, not a model file (.pt/.ckpt)")
    if not path.exists():
        raise ModelError(f"model file {path} not found (shipped models: {', '.join(sorted(PRETRAINED))})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a pickled object: not run
        raise ModelError(f"{path} holds pickled Python objects; refused without running them "
                         f"(only morered .pt/.ckpt files with plain tensors load): {_first_line(err)}") from None
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ModelError(f"{path} is not a model file (.pt/.ckpt): {_first_line(err)}") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("morered"), dict):  # a Lightning checkpoint of `morered train`
        ckpt = ckpt["morered"]
    if not isinstance(ckpt, dict) or ckpt.get("format") != "morered-model/1":
        raise ModelError(f"{path} is not a morered model (no 'format: morered-model/1')")
    if ckpt.get("model_type") == "forcefield":
        raise _forcefield_error(str(path))
    try:
        model = build_model(ckpt["model_args"])
        model.load_state_dict(ckpt["state_dict"])
        schedule = NoiseSchedule.from_dict(ckpt["schedule"])
        model_type = str(ckpt["model_type"])
        info = ckpt.get("dataset_info") or {}
        elements = set(int(z) for z in info.get("elements", range(1, 101)))
        max_atoms = int(info.get("max_atoms", 10_000))
        max_distance = info.get("max_distance")
    except Exception as err:
        raise ModelError(f"{path} is an incomplete or damaged morered model: {_first_line(err)}") from None
    if model_type not in ("jt", "ddpm", "time"):
        raise ModelError(f"{path}: unknown model type {model_type!r}")
    try:
        model.eval().requires_grad_(False).to(device)
    except Exception as err:
        raise OptionError(f"--device {device}: {_first_line(err)}") from None
    return LoadedModel(
        model=model,
        schedule=schedule,
        model_type=model_type,
        elements=elements,
        max_atoms=max_atoms,
        source=str(path),
        max_distance=None if max_distance is None else float(max_distance),
    )


def _first_line(err: Exception) -> str:
    text = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
    return text[:200]


def pair(noise: LoadedModel, time: LoadedModel) -> LoadedModel:
    """A separate noise model and time predictor used together (MoreRed-AS / -ITP)."""
    if not noise.has_noise or not time.has_time:
        raise ModelError(f"need a noise model and a time model, got {noise.model_type} and {time.model_type}")
    if noise.schedule.to_dict() != time.schedule.to_dict():
        raise ModelError("the noise and time models were trained with different schedules")
    dists = [d for d in (noise.max_distance, time.max_distance) if d is not None]
    return LoadedModel(
        NoiseAndTime(noise.model, time.model), noise.schedule, "pair",
        noise.elements & time.elements, min(noise.max_atoms, time.max_atoms), f"{noise.source} + {time.source}",
        min(dists) if dists else None,
    )


def default_model(variant: str, device="cpu") -> LoadedModel:
    """The shipped model for a variant: JT for ``jt``; the DDPM + time pair for ``as`` / ``itp``;
    the DDPM model for ``ddpm``."""
    if variant == "jt":
        return load_model("jt", device)
    if variant == "ddpm":
        return load_model("ddpm", device)
    return pair(load_model("ddpm", device), load_model("time", device))
