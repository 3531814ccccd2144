#!/usr/bin/env bash
# Create .venv with a CPU torch (never replaces a torch you already have in another env) and this package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # torch==2.13.0 is a CPU build on this workplace's disk; elsewhere pick the build for your GPU.
  .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[test]"
