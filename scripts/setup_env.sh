#!/usr/bin/env bash
# Set up everything vit_patching needs on a fresh Debian machine (offline model weights are shipped):
#   .venv with torch==2.14.1 / torchvision==0.29.1 (the pair that imports together with timm here),
#   vit_patching installed editable with its dev extras, a `python3` Jupyter kernel inside the venv
#   (the tutorials run on it), and Debian's chromium for PNG export and rendering checks.
# Idempotent: re-running only installs what is missing. Quiet on success; any failing step stops the script
# with its output shown.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi

# Run a command quietly: its output is shown only if it fails, and its exit status is the script's.
quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        grep -v "is ignored" "$log" >&2 || true  # pip's noise about ignored options is not the error
        rm -f "$log"
        echo "setup_env: failed: $*" >&2
        exit 1
    fi
    rm -f "$log"
}

# Pin only here; pyproject keeps loose ranges.
quiet .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
quiet .venv/bin/python -m pip install -q -e ".[dev]"
# Everything the test suite imports (pytest-xdist is the module xdist, kaleido drives PNG export).
.venv/bin/python -c "
import importlib, sys
mods = ['torch', 'torchvision', 'timm', 'transformer_lens', 'vit_patching', 'captum', 'kaleido', 'pytest',
        'xdist', 'beartype', 'jaxtyping', 'nbclient', 'nbformat', 'nbconvert', 'ipywidgets', 'accelerate', 'plotly',
        'safetensors', 'PIL', 'huggingface_hub', 'open_clip', 'transformers']
missing = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # an ImportError, or a package that is installed but broken
        missing.append(f'{m} ({type(e).__name__}: {e})')
if missing:
    sys.exit('setup_env: the Python environment is broken, cannot import: ' + '; '.join(missing))
"
quiet .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (vit_patching)"

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        quiet apt-get update -qq
        quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "setup_env: chromium is missing; install it (sudo apt-get install -y chromium) for PNG export" >&2
    fi
fi
echo "setup_env: ready (.venv)"
