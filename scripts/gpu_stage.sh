#!/usr/bin/env bash
# One training stage of a shipped model on a lent GPU, in calls of at most ~9 minutes that resume.
#
# Prepare once, on the CPU machine (repo root):
#   bash scripts/gpu_stage.sh --prepare          # .whl/ (ase for Python 3.12), .cache/qm9_v1.npz,
#                                                # .cache/soft_modes/ (the JT config's MMFF94 draws)
# Then, with the device tool, as often as the device time allows (each call resumes the last):
#   run(command="bash scripts/gpu_stage.sh jt 520",
#       carry=[".cache/qm9_v1.npz", ".cache/soft_modes", ".whl", "runs/gpu"], timeout_s=600)
# and after each call copy what came back into runs/gpu/<model>/ here (files_at is read-only):
#   bash scripts/gpu_stage.sh --collect FILES_AT jt
# When done, ship as usual: python scripts/ship_models.py runs/gpu/jt --hardware "1x H100, ..."
#
# MODEL is jt, ddpm or time: the config src/morered/models/MODEL.yaml, warm-started from the
# shipped MODEL.pt (ddpm/time: from jt.pt when MORERED_INIT=jt). Extra `morered train` options
# go in MORERED_TRAIN_ARGS (e.g. "--set data.batch_size=256 --set optim.lr=3e-4").
# A GPU stage may grow the warm start wider (same function at step 0, more capacity; the paper's
# PaiNN has 256 features): MORERED_TRAIN_ARGS="--set model.representation.n_features=256" on every
# call (the growth happens once, at the first; the resumes need the same config).
# Force fields (mlff, mlff_dens): the labels travel too, and a stage that changes the force cap
# starts from scratch (a new force scale does not fit old weights): add the labels file to carry and
#   MORERED_INIT=none MORERED_TRAIN_ARGS="--set forcefield.labels=.cache/labels/labels-681c42d9b8b9da97.npz
#     --set forcefield.max_force=50 --set forcefield.weights.energy=20 --set data.batch_size=128"
# (labels: `morered label --n-train 10000 --n-val 300 --n-test 200 --n-normal-mode 300 --threads 1`),
#   carry=[".cache/labels/labels-681c42d9b8b9da97.npz", ".whl", "runs/gpu"] (~50 MB); checked on the
#   CPU with the dry run below (MORERED_INIT=none, mlff, 40 s: 33 steps, best.pt written).
# To continue the capped line instead (plain stage 12: 38,443 steps, 128 features; forcefield README), warm-start
#   from the handed-on weights with the stage settings (the cap and scale stay those of the file):
#   MORERED_INIT=benchmarks/results/forcefield/weights/ff12_wide128_s0_38443.pt  (DeNS: mlff_dens, weights/ff*_dens_*)
#   MORERED_TRAIN_ARGS="--set forcefield.labels=.cache/labels/labels-681c42d9b8b9da97.npz --set forcefield.max_force=50
#     --set forcefield.weights.energy=20 --set model.representation.n_features=128 --set optim.lr=3e-4 ..."  (1e-4 ends level: stage-10 A/B)
#   (the targets need ~1-2 million steps of batch 32: benchmarks/forcefield_scaling.py).
# A dry run on the CPU: PYTHON=.venv/bin/python MORERED_ACCELERATOR=cpu OUT=/tmp/gpu_out bash scripts/gpu_stage.sh jt 30
# Data: the QM9 cache (35 MB) and the soft-mode draws (18 MB) travel in .cache, so the device needs
# no qm9pack, no RDKit work and no network (carry is limited to 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
  grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
  mkdir -p .whl
  ase_version=$(python3 -c "import importlib.metadata as m; print(m.version('ase'))" 2>/dev/null \
                || .venv/bin/python -c "import importlib.metadata as m; print(m.version('ase'))")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "ase==${ase_version}"
  MORERED_CACHE=$PWD/.cache .venv/bin/python -c "from morered.data.qm9 import load_qm9; print(len(load_qm9()), 'QM9 molecules cached')"
  # the soft-mode table of the JT config (the same seed and training split as a run): only that file
  MORERED_CACHE=$PWD/.cache .venv/bin/python - <<'PY'
import shutil
from morered.data.qm9 import cache_dir
from morered.data.soft_modes import SoftModes
from morered.training.config import load_config
from morered.training.train import load_training_data, soft_mode_table
cfg = load_config("src/morered/models/jt.yaml")
table = soft_mode_table(cfg, load_training_data(cfg)[0])
if table is not None:
    keep = cache_dir() / "soft_modes"
    for f in keep.glob("soft_modes-*.npz"):  # re-save in half precision, drop tables of other settings
        t = SoftModes.load(f)
        if len(t.ids) == len(table.ids) and (t.ids == table.ids).all():
            t.save(f)
        else:
            f.unlink()
    print(len(table), "molecules with soft-mode draws cached")
PY
  du -sh .whl .cache/qm9_v1.npz .cache/soft_modes
  exit 0
fi

if [ "${1:-}" = "--collect" ]; then
  src=$2; model=$3
  mkdir -p "runs/gpu/$model/checkpoints"
  cp "$src/best.pt" "$src/summary.json" "$src/config.yaml" "$src/train.log" "runs/gpu/$model/" 2>/dev/null || true
  [ -f "$src/last.ckpt" ] && cp "$src/last.ckpt" "runs/gpu/$model/checkpoints/last.ckpt"
  ls -la "runs/gpu/$model" "runs/gpu/$model/checkpoints"
  exit 0
fi

model=${1:?usage: gpu_stage.sh MODEL SECONDS}
seconds=${2:-520}
init_args="--init-from src/morered/models/${MORERED_INIT:-$model}.pt"
# a model file instead of a shipped name, e.g. the handed-on warm start:
#   MORERED_INIT=benchmarks/results/warm_start/jt_stage12.pt
case "${MORERED_INIT:-}" in *.pt) init_args="--init-from $MORERED_INIT" ;; esac
[ "${MORERED_INIT:-}" = "none" ] && init_args=""
out=runs/gpu/$model
mkdir -p runs/gpu
py=${PYTHON:-python3}  # the device's python3 holds its CUDA torch
$py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site MORERED_CACHE=$PWD/.cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# rerunning into the same --out resumes from its checkpoints/last.ckpt (carried from the last call)
$py -m morered.cli train --config "src/morered/models/$model.yaml" $init_args --out "$out" \
  --accelerator "${MORERED_ACCELERATOR:-gpu}" --max-time "${seconds}s" ${MORERED_TRAIN_ARGS:-} 2>&1 | tee "$out.log" | grep -v "it/s" || true
mkdir -p "${OUT:-/tmp/gpu_out}"
cp "$out/best.pt" "$out/config.yaml" "${OUT:-/tmp/gpu_out}/" 2>/dev/null || true
cp "$out/summary.json" "${OUT:-/tmp/gpu_out}/" 2>/dev/null || true
cp "$out/checkpoints/last.ckpt" "${OUT:-/tmp/gpu_out}/" 2>/dev/null || true
cp "$out.log" "${OUT:-/tmp/gpu_out}/train.log"
ls -la "${OUT:-/tmp/gpu_out}"
