"""Copy trained models into the package and record how they were trained.

    python scripts/ship_models.py runs/jt runs/ddpm runs/time
    python scripts/ship_models.py runs/jt_stage2 --hardware "2-core CPU, 1 thread, shared"

For each run folder: ``best.pt`` (EMA weights with the lowest validation loss) becomes
``src/morered/models/<model_type>.pt``.  A run that warm-started from a model file
(``init_from`` in its config, ``morered train --init-from``) is a *stage*: it is appended to the
model's ``stages`` in ``trained.json`` (command, hardware, steps, wall time, validation losses),
and the totals add up over the stages.

For each run folder: ``best.pt`` (EMA weights with the lowest validation loss) becomes
``src/morered/models/<model_type>.pt`` (its training input is the committed ``<model_type>.yaml``);
``src/morered/models/trained.json`` records the command, steps, wall time and the validation-loss
history of every run and resume.
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import torch

def val_history(run: Path) -> list[list[float]]:
    """[step, val_loss] of every validation in every run/resume of ``run``."""
    rows = []
    for log in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(log, newline="") as f:
            rows += [[int(r["step"]), round(float(r["val_loss"]), 5)] for r in csv.DictReader(f) if r.get("val_loss")]
    return sorted(rows)


def shipped_name(ckpt: dict) -> str:
    """File stem a model ships under: its model type; force fields under the benchmark's method
    names (``mlff``, ``mlff_dens``; morered.forcefield.calculator.SHIPPED)."""
    if ckpt["model_type"] != "forcefield":
        return ckpt["model_type"]
    return "mlff_dens" if ((ckpt.get("config") or {}).get("forcefield") or {}).get("dens") else "mlff"


args = sys.argv[1:]
hardware = None
if "--hardware" in args:
    i = args.index("--hardware")
    hardware = args[i + 1]
    del args[i:i + 2]
models = Path(__file__).resolve().parents[1] / "src" / "morered" / "models"
record = json.loads((models / "trained.json").read_text()) if (models / "trained.json").exists() else {}
for run in map(Path, args):
    ckpt = torch.load(run / "best.pt", weights_only=True)
    kind = shipped_name(ckpt)
    config = ckpt.get("config", {})
    summary = json.loads((run / "summary.json").read_text())
    init_from = config.get("init_from")
    shutil.copyfile(run / "best.pt", models / f"{kind}.pt")
    entry = {
        "command": f"morered train --config src/morered/models/{kind}.yaml --out {run} --max-time <budget> "
                   "(resumed with the same command)",
        "global_step_best": ckpt["global_step"],
        "global_step_total": summary["global_step"],
        "best_val_loss": ckpt["val_loss"],
        "wall_seconds_total": summary.get("wall_seconds_total", summary.get("wall_seconds_this_run")),
        "runs": summary.get("runs", 1),
        "skipped_batches": summary["skipped_batches"],
        "parameters": summary["parameters"],
        "n_train": summary["dataset"]["n_train"],
        "size_bytes": (models / f"{kind}.pt").stat().st_size,
        "val_loss_history": val_history(run),
    }
    source = torch.load(init_from, weights_only=True) if init_from and Path(init_from).exists() else None
    source_kind = source and shipped_name(source)
    if init_from and source is not None and (source_kind != kind
                                            or source["model_args"]["representation"]
                                            != ckpt["model_args"]["representation"]):
        # a new network started from another model's parts (e.g. the AS/ITP pair from the JT
        # model's representation + matching head): a new history, the replaced model kept on record
        entry["command"] = (f"morered train --config src/morered/models/{kind}.yaml --init-from {init_from} "
                            f"--out {run} --set optim.lr={config['optim']['lr']}")
        entry["hardware"] = hardware
        entry["init_from"] = (f"{init_from}: {source['model_type']} model at its step {source.get('global_step')}, "
                              f"val loss {source.get('val_loss')} (representation + matching head)")
        replaced = record.get(kind)
        record[kind] = {**entry, "stages": [dict(entry)]}
        if replaced:
            record[kind]["replaced"] = {k: v for k, v in replaced.items() if k not in ("stages", "val_loss_history")}
    elif init_from and kind in record:  # a stage on top of the shipped model
        previous = record[kind]
        stages = previous.pop("stages", None) or [dict(previous)]
        sets = ["optim.lr=" + str(config["optim"]["lr"])]
        soft = (config.get("diffusion") or {}).get("soft_modes") or {}
        if float(soft.get("fraction", 0)) > 0:  # soft-mode noise (morered.data.soft_modes)
            sets += [f"diffusion.soft_modes.{k}={v}" for k, v in soft.items()]
        if config["optim"].get("schedule") == "cosine":  # the anneal is part of the recipe
            sets += ["optim.schedule=cosine", f"optim.min_lr={config['optim']['min_lr']}",
                     f"trainer.max_steps={config['trainer']['max_steps']}"]
        entry["command"] = (f"morered train --config src/morered/models/{kind}.yaml --init-from {init_from} "
                            f"--out {run} " + " ".join(f"--set {k}" for k in sets))
        entry["hardware"] = hardware
        entry["init_from"] = init_from
        stages.append(entry)
        record[kind] = {
            "global_step_total": sum(int(st["global_step_total"]) for st in stages),
            "best_val_loss": entry["best_val_loss"],
            "wall_seconds_total": round(sum(float(st["wall_seconds_total"]) for st in stages), 1),
            "parameters": entry["parameters"],
            "size_bytes": entry["size_bytes"],
            "stages": stages,
        }
    else:
        entry["hardware"] = hardware
        if kind.startswith("mlff"):  # the labels are an input of the command (morered label, not committed)
            sets = [f"forcefield.labels={Path(config['forcefield']['labels']).name}"]
            entry["command"] = (f"morered train --config src/morered/models/{kind}.yaml --out {run} --max-time <budget> "
                                + " ".join(f"--set {k}" for k in sets))
            entry["labels"] = summary["dataset"].get("label_settings")
        record[kind] = entry
    print(kind, {k: v for k, v in record[kind].items() if k not in ("stages", "val_loss_history")})
(models / "trained.json").write_text(json.dumps(record, indent=2) + "\n")
