#!/usr/bin/env bash
# One GPU check (< 8 minutes): bench_forward, bench_patching, bench_caap on CUDA (fp32, bf16) for ViT-S/B/L-16,
# plus CAAP and a layer sweep on the GPU compared with the CPU, printed as one table.
#   scripts/device_check.sh                      # on the GPU machine
#   scripts/device_check.sh --device cpu --quick # smoke test on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec timeout 470 "$PY" scripts/device_check.py "$@"
