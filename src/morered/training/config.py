"""Training configuration: the packaged defaults, a user's YAML file, and command-line overrides."""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path

import yaml


def default_config() -> dict:
    return yaml.safe_load(resources.files("morered.configs").joinpath("default.yaml").read_text())


#: sections whose keys are passed on as keyword arguments (checked where they are used)
OPEN_SECTIONS = ("representation", "schedule")


def merge(base: dict, update: dict, path: str = "") -> dict:
    """Recursive merge; unknown keys are an error (they are almost always typos)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if k not in out and path.rstrip(".").split(".")[-1] not in OPEN_SECTIONS:
            raise KeyError(f"unknown config key {path + k!r}")
        if isinstance(out[k], dict) and isinstance(v, dict) and k not in OPEN_SECTIONS:
            out[k] = merge(out[k], v, f"{path}{k}.")
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def set_key(config: dict, dotted: str, value) -> dict:
    """Return a copy of ``config`` with ``a.b.c = value``."""
    update: dict = {}
    node = update
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return merge(config, update)


def parse_override(text: str) -> tuple[str, object]:
    """``"optim.lr=5e-4"`` -> ``("optim.lr", 0.0005)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    v = yaml.safe_load(value)
    if isinstance(v, str) and re.fullmatch(r"[-+]?\d*\.?\d+([eE][-+]?\d+)?", v):
        v = float(v)
    return key.strip(), v


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Defaults <- YAML file <- overrides (``["a.b=1", ...]`` or ``{"a.b": 1}``)."""
    cfg = default_config()
    if path is not None:
        cfg = merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for k, v in items:
        cfg = set_key(cfg, k, v)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    if cfg["model_type"] not in ("jt", "ddpm", "time", "forcefield"):
        raise ValueError(f"model_type must be jt, ddpm, time or forcefield, not {cfg['model_type']!r}")
    if str(cfg["trainer"]["precision"]).startswith("16"):
        # the GradScaler needs Lightning's automatic optimisation; ours is manual (to skip bad
        # batches on every rank together), so fp16 loss scaling is not supported
        raise ValueError("precision 16-mixed is not supported: use bf16-mixed (GPUs since Ampere) or 32-true")
    if not 0.0 <= float(cfg["diffusion"]["low_t_fraction"]) <= 1.0:
        raise ValueError("diffusion.low_t_fraction must be in [0, 1]")


def parse_duration(text) -> float | None:
    """Seconds from ``"90s"``, ``"50m"``, ``"2h"``, ``"1:30:00"``, ``"DD:HH:MM:SS"`` or a number."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    t = str(text).strip()
    m = re.fullmatch(r"([\d.]+)\s*([smhd]?)", t)
    if m:
        return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    parts = [float(p) for p in t.split(":")]
    scale = [1, 60, 3600, 86400]
    return sum(p * scale[k] for k, p in enumerate(reversed(parts)))
