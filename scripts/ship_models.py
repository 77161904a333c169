"""Copy trained models into the package and record how they were trained.

    python scripts/ship_models.py runs/jt runs/ddpm runs/time

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


models = Path(__file__).resolve().parents[1] / "src" / "morered" / "models"
record = json.loads((models / "trained.json").read_text()) if (models / "trained.json").exists() else {}
for run in map(Path, sys.argv[1:]):
    ckpt = torch.load(run / "best.pt", weights_only=True)
    kind = ckpt["model_type"]
    summary = json.loads((run / "summary.json").read_text())
    shutil.copyfile(run / "best.pt", models / f"{kind}.pt")
    record[kind] = {
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
    print(kind, record[kind])
(models / "trained.json").write_text(json.dumps(record, indent=2) + "\n")
