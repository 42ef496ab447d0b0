#!/usr/bin/env bash
# Set up everything vit_patching needs on a fresh Debian machine (offline model weights are shipped):
#   .venv with torch==2.14.1 / torchvision==0.29.1 (the pair that imports together with timm here),
#   vit_patching installed editable with its dev extras, a `python3` Jupyter kernel inside the venv
#   (the tutorials run on it), and Debian's chromium for PNG export and rendering checks.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Pin only here; pyproject keeps loose ranges.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, torchvision, timm, transformer_lens, vit_patching" \
    || { echo "setup_env: the Python environment is broken" >&2; exit 1; }
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (vit_patching)" >/dev/null

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
    else
        echo "setup_env: chromium is missing; install it (sudo apt-get install -y chromium) for PNG export" >&2
    fi
fi
echo "setup_env: ready (.venv)"
