#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run Break-A-Scene end to end.
# Until the toy-world model lands this uses a tiny RANDOM-WEIGHT model: the pipeline runs for real
# (training both phases, pack, export, generation) but the generated images are noise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT_DIR:-out/demo}
SCENE=${SCENE:-../shared/scenes/creature}
mkdir -p "$OUT"
.venv/bin/python -m bas_engine.testing "$OUT/tiny-model"
.venv/bin/bas extract "$SCENE" --model "$OUT/tiny-model" --out "$OUT/creature.safetensors" \
  --names figurine,bowl,stone --init figurine,bowl,stone --resolution 64 --phase1-steps 20 --phase2-steps 20 --device cpu
.venv/bin/bas export "$OUT/creature.safetensors" --lora "$OUT/creature_lora.safetensors" --embeddings "$OUT/embeddings"
.venv/bin/bas generate "$OUT/creature.safetensors" --model "$OUT/tiny-model" --device cpu \
  --prompt "an oil painting of <figurine> next to <stone>" --steps 10 --num 2 --out "$OUT/images"
echo "demo done: $OUT (random-weight model: the images are noise, the pipeline is real)"
