#!/usr/bin/env bash
# The GPU check: the engine's configurations (LoRA / full, gradient checkpointing on / off) on SD1.5 shapes at
# 512 px and full-size SDXL at 1024 px, and the ComfyUI Trainer node on CUDA, in one table (scripts/gpu_check.py).
# About 8 minutes on one GPU; nothing is downloaded (random weights, built locally).
#
#   bash scripts/gpu_check.sh                        # CUDA
#   bash scripts/gpu_check.sh --device cpu --tiny    # tiny models on the CPU: a check of the script (CI runs it)
#
# On a machine whose Python lacks diffusers or ComfyUI's own requirements (the lent GPU machines), first run
# `bash scripts/gpu_prepare.sh` here: it puts their wheels into .whl/ and a copy of the pinned ComfyUI into
# .gpu/comfyui (both ignored by git); carry both (device tool: carry [".whl", ".gpu"]). This script installs the
# wheels into /tmp/bas-site when they are there and the Python cannot import diffusers.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bas-site \
    .whl/*.whl
  export PYTHONPATH=/tmp/bas-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PYTHON" -c "import av" 2>/dev/null; then
  # PyAV is not on the lent GPU machines and too large to carry; ComfyUI imports it at start for its video types
  # only. A stand-in that imports and refuses to decode: nothing this check runs touches video.
  mkdir -p /tmp/bas-stubs/av/container /tmp/bas-stubs/av/subtitles
  cat > /tmp/bas-stubs/av/__init__.py <<'STUB'
"""Stand-in for PyAV written by scripts/gpu_check.sh: ComfyUI's video types import; opening media fails."""
time_base = 1000000
class _Missing:
    pass
VideoStream = AudioStream = VideoFrame = AudioFrame = _Missing
def open(*args, **kwargs):
    raise RuntimeError("PyAV is not installed on this machine (stand-in from scripts/gpu_check.sh)")
STUB
  echo "class InputContainer: pass" > /tmp/bas-stubs/av/container/__init__.py
  echo "" > /tmp/bas-stubs/av/subtitles/__init__.py
  echo "class SubtitleStream: pass" > /tmp/bas-stubs/av/subtitles/stream.py
  export PYTHONPATH=/tmp/bas-stubs${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${COMFYUI_PATH:-}" ]; then
  for candidate in ../shared/comfyui .gpu/comfyui; do
    if [ -f "$candidate/main.py" ]; then COMFYUI_PATH=$(cd "$candidate" && pwd); break; fi
  done
fi
export COMFYUI_PATH=${COMFYUI_PATH:-}
exec "$PYTHON" scripts/gpu_check.py "$@"
