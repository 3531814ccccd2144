#!/usr/bin/env bash
# The test command. Engine tests always run (in .venv). Tests against the real ComfyUI run too when
# COMFYUI_PATH names a ComfyUI checkout with its own venv (see docs/COMFYUI_TESTS.md); without it they
# are skipped and pytest lists the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${COMFYUI_PATH:-}" ] && [ -x "$COMFYUI_PATH/.venv/bin/python" ]; then
  status=0
  .venv/bin/python -m pytest -q tests --ignore=tests/comfy "$@" || status=$?
  echo "== ComfyUI tests against $COMFYUI_PATH (ComfyUI's own venv)"
  "$COMFYUI_PATH/.venv/bin/python" -m pytest -q -rs tests/comfy "$@" || status=$?
  exit $status
fi
echo "== COMFYUI_PATH is not set (or has no .venv): the ComfyUI tests are skipped, reasons below"
exec .venv/bin/python -m pytest -q -rs tests "$@"
