#!/usr/bin/env bash
# Prepare a run of scripts/gpu_check.sh on a lent GPU machine (run here, where PyPI can be reached): the wheels its
# Python lacks go into .whl/ (diffusers for the engine's bench; torchsde and trampoline for ComfyUI's samplers), and
# the pinned ComfyUI (../shared/comfyui, which does not travel) is copied into .gpu/comfyui. Both folders are ignored
# by git; name them in the device call's carry: [".whl", ".gpu"]. The machine's Python is 3.12 with torch,
# transformers, safetensors and the rest of ComfyUI's needs (the device tool's KINDS.md); PyAV (35 MB, over the
# transfer limit) is not carried: gpu_check.sh puts a stand-in there (ComfyUI imports it for video nodes only).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2
rm -rf .gpu/comfyui
mkdir -p .gpu
tar -C ../shared --exclude=comfyui/tests --exclude=comfyui/tests-unit --exclude='*.pyc' -cf - comfyui | tar -C .gpu -xf -
du -sh .whl .gpu
echo "carry [\".whl\", \".gpu\"] and run: bash scripts/gpu_check.sh"
