#!/usr/bin/env bash
# Set up (with test tools) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# glibc's malloc returns memory to the OS too eagerly for batched tensors: ~2x slower otherwise
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10000000000
export MORERED_CACHE="${MORERED_CACHE:-$PWD/.cache}"
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then py=python; else py=.venv/bin/python; fi
exec "$py" -m pytest -q "$@"
