#!/usr/bin/env bash
# Set up morered: a virtual environment in .venv (unless one is already active), torch, the package.
#   bash scripts/setup.sh          # runtime + baselines (tblite, pyscf)
#   bash scripts/setup.sh --test   # also pytest
# torch: kept if the environment already has one (e.g. your CUDA build); otherwise torch==2.13.0,
# the CPU build. No other requirement may pull a different torch: pip sees the installed one.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="baselines"
[ "${1:-}" = "--test" ] && extras="baselines,test"

if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    # see a system-wide torch (e.g. a CUDA build) from inside the venv instead of replacing it
    if python3 -c "import torch" 2>/dev/null; then
      python3 -m venv --system-site-packages .venv
    else
      python3 -m venv .venv
    fi
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if python -c "import torch" 2>/dev/null; then
  echo "keeping installed torch $(python -c 'import torch; print(torch.__version__)')"
else
  python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
python -m pip install -q -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch, morered; print(f'morered {morered.__version__} with torch {torch.__version__} ready')"
