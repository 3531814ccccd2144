#!/usr/bin/env bash
# Issue 10's measurements of a toy model, in order, each resumable: run it in the background and run it again
# after an interruption; finished steps are skipped (bas fidelity keeps one record per finished run).
#
#   nohup bash scripts/measure_toy_model.sh MODEL_DIR OUT_DIR >> OUT_DIR.log 2>&1 &
#
# 1. bas toy-eval (200 held-out captions)      -> OUT_DIR/toy_eval.txt (table + JSON line)
# 2. bas demo                                  -> OUT_DIR/demo/ (report.html, scores.json), OUT_DIR/demo.txt
# 3. bas fidelity, the six variants            -> OUT_DIR/ablations/ (SCENES x SEEDS runs per variant)
# 4. bas fidelity --concepts 1,2,3,4,6,8       -> OUT_DIR/concepts/ (+ concepts.png); the counts the model's world
#    puts in one scene (v3: 1,2,3,4), or CONCEPTS
# 5. bas fidelity --masks exact,...,shifted    -> OUT_DIR/masks/ (+ masks.png)
# Sizes: ABLATION_SCENES / ABLATION_SEEDS (default 4 x 3), SWEEP_SCENES / SWEEP_SEEDS (default 4 x 2), WORKERS (2).
# Each step's wall time is in its output (toy-eval and demo: `time`; fidelity: table.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ] || [ ! -f "$1/model_index.json" ]; then
  echo "usage: $0 MODEL_DIR OUT_DIR   (MODEL_DIR: a toy model folder with model_index.json)" >&2
  exit 2
fi
MODEL=$1
OUT=$2
BAS=${BAS:-.venv/bin/bas}
PY=${PY:-.venv/bin/python}
# the concept counts the model's world holds (toy_world.json: v1 up to 8, v3 up to 4)
CONCEPTS=${CONCEPTS:-$("$PY" -c "import sys; from bas_toyworld.worlds import get_world, model_world
w = get_world(model_world(sys.argv[1])); print(','.join(str(n) for n in (1, 2, 3, 4, 6, 8) if n <= w.max_concepts))" "$MODEL")}
WORKERS=${WORKERS:-2}
mkdir -p "$OUT"

step() {  # step NAME COMMAND...: run unless OUT/NAME.done exists; the marker is written only on success
  local name=$1
  shift
  if [ -f "$OUT/$name.done" ]; then
    echo "[$(date -u +%H:%M)] $name: done before, skipped"
    return
  fi
  echo "[$(date -u +%H:%M)] $name: $*"
  local start=$SECONDS
  "$@"
  echo "$((SECONDS - start)) s" > "$OUT/$name.done"
  echo "[$(date -u +%H:%M)] $name: finished in $((SECONDS - start)) s"
}

toy_eval() { "$BAS" toy-eval --model "$MODEL" --captions 200 --threads 2 --sheet "$OUT/toy_eval_sheet.png" \
  > "$OUT/toy_eval.txt.tmp" && mv "$OUT/toy_eval.txt.tmp" "$OUT/toy_eval.txt"; cat "$OUT/toy_eval.txt"; }
demo() { "$BAS" demo --model "$MODEL" --out "$OUT/demo" --threads 2 > "$OUT/demo.txt.tmp" \
  && mv "$OUT/demo.txt.tmp" "$OUT/demo.txt"; tail -20 "$OUT/demo.txt"; }

step toy_eval toy_eval
step demo demo
step ablations "$BAS" fidelity --model "$MODEL" --out "$OUT/ablations" --workers "$WORKERS" \
  --scenes "${ABLATION_SCENES:-4}" --seeds "${ABLATION_SEEDS:-3}"
step concepts "$BAS" fidelity --model "$MODEL" --out "$OUT/concepts" --workers "$WORKERS" \
  --scenes "${SWEEP_SCENES:-4}" --seeds "${SWEEP_SEEDS:-2}" --concepts "$CONCEPTS"
step masks "$BAS" fidelity --model "$MODEL" --out "$OUT/masks" --workers "$WORKERS" \
  --scenes "${SWEEP_SCENES:-4}" --seeds "${SWEEP_SEEDS:-2}" --masks exact,loose,dilated,eroded,shifted
echo "[$(date -u +%H:%M)] all done: $OUT"
