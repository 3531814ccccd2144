#!/usr/bin/env bash
# The test command. Engine tests always run (in .venv). Tests against the real ComfyUI run too when
# COMFYUI_PATH names a ComfyUI checkout with its own venv (see docs/COMFYUI_TESTS.md); without it they
# are skipped and pytest lists the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
.venv/bin/python -m pytest -q tests --ignore=tests/comfy "$@" || status=$?
if [ -n "${COMFYUI_PATH:-}" ] && [ -x "$COMFYUI_PATH/.venv/bin/python" ]; then
  echo "== ComfyUI tests against $COMFYUI_PATH"
  "$COMFYUI_PATH/.venv/bin/python" -m pytest -q tests/comfy "$@" || status=$?
else
  echo "== ComfyUI tests: COMFYUI_PATH is not set (or has no .venv); listing them as skipped"
  .venv/bin/python -m pytest -q tests/comfy -rs "$@" || [ $? -eq 5 ] || status=$?
fi
exit $status
