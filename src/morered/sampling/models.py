"""Loading trained models: exported ``.pt`` files, Lightning ``.ckpt`` files, and the models that
ship inside the package (``src/morered/models``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from morered.diffusion.schedule import NoiseSchedule
from morered.nn.model import NoiseAndTime, build_model

#: the shipped models by name
PRETRAINED = {"jt": "jt.pt", "ddpm": "ddpm.pt", "time": "time.pt"}


@dataclass
class LoadedModel:
    """A network ready for the samplers, with what it was trained on."""

    model: torch.nn.Module
    schedule: NoiseSchedule
    model_type: str  # jt | ddpm | time | pair
    elements: set[int]
    max_atoms: int  # largest molecule seen in training
    source: str

    @property
    def has_time(self) -> bool:
        return self.model_type in ("jt", "time", "pair")

    @property
    def has_noise(self) -> bool:
        return self.model_type in ("jt", "ddpm", "pair")


def pretrained_path(name: str) -> Path:
    if name not in PRETRAINED:
        raise ValueError(f"no shipped model {name!r}; shipped: {sorted(PRETRAINED)}")
    path = Path(str(resources.files("morered.models").joinpath(PRETRAINED[name])))
    if not path.exists():
        raise FileNotFoundError(f"the shipped model {name!r} is missing from the installation ({path})")
    return path


def load_model(path_or_name: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model: a shipped name (``jt``, ``ddpm``, ``time``), an exported ``.pt`` or a
    training ``.ckpt`` (its EMA weights).  Loaded with ``weights_only=True``: no code is unpickled."""
    p = str(path_or_name)
    path = pretrained_path(p) if p in PRETRAINED and not Path(p).exists() else Path(p)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "morered" in ckpt:  # a Lightning checkpoint of `morered train`
        ckpt = ckpt["morered"]
    if ckpt.get("format") != "morered-model/1":
        raise ValueError(f"{path} is not a morered model (no 'format: morered-model/1')")
    model = build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval().requires_grad_(False).to(device)
    info = ckpt.get("dataset_info") or {}
    return LoadedModel(
        model=model,
        schedule=NoiseSchedule.from_dict(ckpt["schedule"]),
        model_type=ckpt["model_type"],
        elements=set(info.get("elements", range(1, 101))),
        max_atoms=int(info.get("max_atoms", 10_000)),
        source=str(path),
    )


def pair(noise: LoadedModel, time: LoadedModel) -> LoadedModel:
    """A separate noise model and time predictor used together (MoreRed-AS / -ITP)."""
    if not noise.has_noise or not time.has_time:
        raise ValueError(f"need a noise model and a time model, got {noise.model_type} and {time.model_type}")
    if noise.schedule.to_dict() != time.schedule.to_dict():
        raise ValueError("the noise and time models were trained with different schedules")
    return LoadedModel(
        NoiseAndTime(noise.model, time.model), noise.schedule, "pair",
        noise.elements & time.elements, min(noise.max_atoms, time.max_atoms), f"{noise.source} + {time.source}",
    )


def default_model(variant: str, device="cpu") -> LoadedModel:
    """The shipped model for a variant: JT for ``jt``; the DDPM + time pair for ``as`` / ``itp``;
    the DDPM model for ``ddpm``."""
    if variant == "jt":
        return load_model("jt", device)
    if variant == "ddpm":
        return load_model("ddpm", device)
    return pair(load_model("ddpm", device), load_model("time", device))
