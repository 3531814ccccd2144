"""scripts/gpu_check.sh, the one script the GPU machine runs, in its CPU mode on tiny models: every part runs
(the engine's LoRA / full x checkpointing matrix on both tiny presets, the ComfyUI Trainer node in place and through
the old conversion path on both test checkpoints, and in place on the tiny Flux beside its memory estimate) and the
table and the JSON hold a figure for each.

    COMFYUI_PATH=/work/shared/comfyui .cache/comfyui-venv/bin/python -m pytest -q tests/comfy/test_gpu_check.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_check_runs_every_part_on_the_cpu(tmp_path, checkpoint_path):
    for name in ("sd15l3", "sdxl_vega"):          # built once for the whole suite (the script would build them too)
        checkpoint_path(name)
    report = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, COMFYUI_PATH=COMFYUI_PATH)
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--device", "cpu", "--tiny",
                          "--steps", "1", "--json", str(report)], capture_output=True, text=True, env=env,
                         timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(report.read_text())
    bench = result["bench"]
    assert {(r["preset"], r["mode"], r["gradient_checkpointing"]) for r in bench} == {
        (p, m, c) for p in ("tiny", "tiny-sdxl") for m in ("lora", "full") for c in ("off", "on")}
    for row in bench:
        assert "error" not in row, row
        assert row["phase1_s_per_step"] > 0 and row["phase2_s_per_step"] > 0
        assert row["phase1_peak_bytes"] >= 0 and row["phase2_peak_bytes"] >= 0
    comfy = result["comfy"]
    assert {(r["model"], r["path"]) for r in comfy} == {
        (m, p) for m in ("sd15l3", "sdxl_vega") for p in ("in-place", "conversion")} | {("flux", "in-place")}
    for row in comfy:
        assert "error" not in row, row
        assert row["footprint_bytes"] > 0 and row["peak_above_bytes"] > 0 and row["device"] == "cpu"
    flux = next(r for r in comfy if r["model"] == "flux")
    assert 0 < flux["estimate_above_bytes"]["on"] < flux["estimate_above_bytes"]["off"]
    # one table with a line per bench configuration and per node run
    table = [line for line in out.stdout.splitlines() if line.startswith(("bench ", "node "))]
    assert len(table) == len(bench) + len(comfy)
    assert result["environment"]["cuda"] is False
