#!/usr/bin/env bash
# The test command (what .ci/run calls). Engine tests run in .venv. The tests against the real ComfyUI
# (tests/comfy: nodes, a headless server, a real browser) run with ComfyUI's own interpreter against
# COMFYUI_PATH, or, when it is not set, the pinned tree at ../shared/comfyui beside this clone, whose venv is
# built outside it (it may be read-only) by ../shared/tools/comfyui-venv into $COMFYUI_VENV
# (default .cache/comfyui-venv; built once, then reused). playwright-core for the browser tests is installed
# into tests/browser/node_modules when npm is there. Without ComfyUI the ComfyUI tests are skipped with the
# reason, unless BAS_REQUIRE_COMFYUI=1 (CI), where that is an error. See docs/COMFYUI_TESTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# A first run writes about 18 GB (ComfyUI's venv 6.3 GB, the random-weight fixture models 7.5 GB, .venv 1.6 GB, the
# tests' temporary files up to ~2 GB at a time; measured on a clean clone, 7 Dec 2026). A full disk shows up only
# deep inside some test ("No space left on device"), so say it here, once for each disk the run writes to.
need_gb=20
seen=""
for dir in "$PWD" "${TMPDIR:-/tmp}"; do
  dev=$(stat -c %d "$dir")
  case " $seen " in *" $dev "*) continue ;; esac
  seen="$seen $dev"
  free_gb=$(df -Pk "$dir" | awk 'NR == 2 {print int($4 / 1048576)}')
  echo "== disk: $free_gb GB free for $dir"
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "warning: a first run of the tests writes about 18 GB; $dir has $free_gb GB free" >&2
  fi
done

bash scripts/setup.sh

comfy=${COMFYUI_PATH:-}
if [ -z "$comfy" ] && [ -f ../shared/comfyui/main.py ]; then
  comfy=$(cd ../shared/comfyui && pwd)
fi
if [ -z "$comfy" ]; then
  if [ "${BAS_REQUIRE_COMFYUI:-0}" != "0" ]; then
    echo "error: no ComfyUI: COMFYUI_PATH is not set and ../shared/comfyui does not exist (BAS_REQUIRE_COMFYUI is set)" >&2
    exit 1
  fi
  echo "== no ComfyUI (COMFYUI_PATH unset, no ../shared/comfyui): the ComfyUI tests are skipped, reasons below"
  exec .venv/bin/python -m pytest -q -rs tests "$@"
fi

# ComfyUI's interpreter: COMFYUI_PYTHON, a .venv inside the checkout, or one built beside it by the shared tool.
python=${COMFYUI_PYTHON:-}
if [ -z "$python" ] && [ -x "$comfy/.venv/bin/python" ]; then
  python="$comfy/.venv/bin/python"
fi
if [ -z "$python" ]; then
  tool="$comfy/../tools/comfyui-venv"
  if [ ! -f "$tool" ]; then
    echo "error: no interpreter for ComfyUI at $comfy: set COMFYUI_PYTHON (or give it a .venv)" >&2
    exit 1
  fi
  venv=${COMFYUI_VENV:-.cache/comfyui-venv}
  echo "== ComfyUI's venv: $venv (built by $tool on first use, then reused)"
  python3 "$tool" "$venv" >/dev/null      # its tree is the comfyui/ beside its folder: $comfy
  python="$venv/bin/python"
fi

if [ ! -f tests/browser/node_modules/playwright-core/package.json ] && command -v npm >/dev/null; then
  echo "== installing playwright-core into tests/browser/node_modules (browser tests)"
  npm ci --prefix tests/browser --no-audit --no-fund --silent
fi

# pytest exits 5 when it collected nothing (e.g. a -k that selects only the other half): not a failure,
# unless neither half ran anything.
ran_any=0
status=0
run() {
  local rc=0
  "$@" || rc=$?
  if [ $rc -eq 5 ]; then rc=0; else ran_any=1; fi
  if [ $rc -ne 0 ]; then status=$rc; fi
}
echo "== engine tests (.venv)"
run .venv/bin/python -m pytest -q -rs tests --ignore=tests/comfy "$@"
echo "== ComfyUI tests against $comfy ($python)"
export COMFYUI_PATH="$comfy"
run "$python" -m pytest -q -rs tests/comfy "$@"
if [ $ran_any -eq 0 ]; then
  echo "error: no test was collected" >&2
  exit 5
fi
exit $status
