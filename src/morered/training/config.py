"""Training configuration: the packaged defaults, a user's YAML file, and command-line overrides."""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path

import yaml

from morered.errors import OptionError


class ConfigKeyError(OptionError, KeyError):
    """An unknown config key (almost always a typo)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def default_config() -> dict:
    return yaml.safe_load(resources.files("morered.configs").joinpath("default.yaml").read_text())


#: sections whose keys are passed on as keyword arguments (checked where they are used)
OPEN_SECTIONS = ("representation", "schedule")


def merge(base: dict, update: dict, path: str = "") -> dict:
    """Recursive merge; unknown keys are an error (they are almost always typos)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if k not in out and path.rstrip(".").split(".")[-1] not in OPEN_SECTIONS:
            raise ConfigKeyError(f"unknown config key {path + k!r}")
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
        raise OptionError(f"--set {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    if not key.strip():
        raise OptionError(f"--set {text!r}: empty key")
    try:
        v = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise OptionError(f"--set {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    if isinstance(v, str) and re.fullmatch(r"[-+]?\d*\.?\d+([eE][-+]?\d+)?", v):
        v = float(v)
    return key.strip(), v


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Defaults <- YAML file <- overrides (``["a.b=1", ...]`` or ``{"a.b": 1}``)."""
    cfg = default_config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise OptionError(f"--config {path}: {'is a directory' if path.is_dir() else 'no such file'}")
        try:
            user = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise OptionError(f"--config {path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
        if user is not None and not isinstance(user, dict):
            raise OptionError(f"--config {path}: expected a mapping of config keys, got {type(user).__name__}")
        cfg = merge(cfg, user or {})
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for k, v in items:
        cfg = set_key(cfg, k, v)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """OptionError naming the first config value that cannot work (before anything is created)."""
    if cfg["model_type"] not in ("jt", "ddpm", "time", "forcefield"):
        raise OptionError(f"model_type must be jt, ddpm, time or forcefield, not {cfg['model_type']!r}")
    if str(cfg["trainer"]["precision"]).startswith("16"):
        # the GradScaler needs Lightning's automatic optimisation; ours is manual (to skip bad
        # batches on every rank together), so fp16 loss scaling is not supported
        raise OptionError("precision 16-mixed is not supported: use bf16-mixed (GPUs since Ampere) or 32-true")
    try:
        low = float(cfg["diffusion"]["low_t_fraction"])
    except (TypeError, ValueError):
        low = -1.0
    if not 0.0 <= low <= 1.0:
        raise OptionError("diffusion.low_t_fraction must be in [0, 1]")
    ints = {"data.batch_size": 1, "data.num_workers": 0, "trainer.val_every_steps": 1,
            "trainer.checkpoint_every_steps": 1, "trainer.log_every_steps": 1, "trainer.num_nodes": 1,
            "data.limit_train": 1, "data.limit_val": 1, "trainer.threads": 1, "seed": 0,
            "trainer.max_steps": -1, "trainer.max_epochs": -1}
    for key, lo in ints.items():
        v = _get(cfg, key)
        if v is None and key in ("data.limit_train", "data.limit_val", "trainer.threads"):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < lo:
            raise OptionError(f"{key} must be an integer >= {lo}, not {v!r}")
    if _get(cfg, "trainer.max_steps") == 0:
        raise OptionError("trainer.max_steps must be >= 1 (or -1: no limit)")
    for key in ("optim.lr", "optim.ema_decay", "optim.grad_clip"):
        v = _get(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise OptionError(f"{key} must be a positive number, not {v!r}")
    schedule = _get(cfg, "optim.schedule")
    if schedule not in ("plateau", "cosine"):
        raise OptionError(f"optim.schedule must be plateau or cosine, not {schedule!r}")
    if schedule == "cosine" and _get(cfg, "trainer.max_steps") in (None, -1):
        raise OptionError("optim.schedule=cosine anneals over trainer.max_steps: set it (--set trainer.max_steps=N; "
                          "steps count from 0 in a warm start and on from the checkpoint in a resume)")
    min_lr = _get(cfg, "optim.min_lr")
    if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or not 0 <= min_lr <= float(_get(cfg, "optim.lr")):
        raise OptionError(f"optim.min_lr must be a number in [0, optim.lr], not {min_lr!r}")
    minutes = _get(cfg, "trainer.checkpoint_every_minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes < 0):
        raise OptionError(f"trainer.checkpoint_every_minutes must be a number >= 0 (0: off), not {minutes!r}")
    parse_duration(cfg["trainer"]["max_time"])
    for key in ("val_fraction", "test_fraction"):
        v = cfg["data"][key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise OptionError(f"data.{key} must be in [0, 1), not {v!r}")


def _get(cfg: dict, dotted: str):
    node = cfg
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return node


def parse_duration(text) -> float | None:
    """Seconds from ``"90s"``, ``"50m"``, ``"2h"``, ``"1:30:00"``, ``"DD:HH:MM:SS"`` or a number."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not 0 < float(text) < float("inf"):
            raise OptionError(f"--max-time {text!r}: must be a positive duration")
        return float(text)
    t = str(text).strip()
    bad = OptionError(f"--max-time {text!r}: not a duration (e.g. 90s, 50m, 2h, 1:30:00)")
    m = re.fullmatch(r"(\d+\.?\d*|\.\d+)\s*([smhd]?)", t)
    if m:
        value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    else:
        try:
            parts = [float(p) for p in t.split(":")]
        except ValueError:
            raise bad from None
        if len(parts) > 4 or any(p < 0 for p in parts):
            raise bad
        scale = [1, 60, 3600, 86400]
        value = sum(p * scale[k] for k, p in enumerate(reversed(parts)))
    if not value > 0 or value == float("inf"):
        raise bad
    return value
