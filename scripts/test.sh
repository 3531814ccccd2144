#!/usr/bin/env bash
# The test command: engine tests always; ComfyUI tests when COMFYUI_PATH names a ComfyUI checkout with a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q tests "$@"
