"""The node pack in a real browser: Debian's Chromium driven by playwright-core (tests/browser/ui_check.mjs)
against a real headless ComfyUI server with the pack, the random-weight SD1.5-shaped fixture checkpoint and the
creature scene. Needs /usr/bin/chromium, node and tests/browser/node_modules (tests/comfy/conftest.py skips
with the reason, or fails under BAS_REQUIRE_COMFYUI=1, when they are missing):

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_browser.py

One run of the page, as a user would: open ComfyUI, load extract_and_generate from the template browser (its
thumbnail shows), shrink it (fixture checkpoint, 64 px, a few training steps), run it, watch the trainer's live
view (the chart gains points, the maps render with their labels), reload mid-training (the view comes back),
wait for the end, click a handle chip of the Concept Prompt Encoder (the handle lands at the cursor), connect
and disconnect a mask input (one more / one less appears). The page's console errors and uncaught errors are
collected; any from this pack fails the test. Screenshots: tests/browser/artifacts/ (git-ignored; or
$BAS_BROWSER_ARTIFACTS).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as h  # noqa: E402

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise
SCRIPT = os.path.join(h.REPO, "tests", "browser", "ui_check.mjs")
ARTIFACTS = os.environ.get("BAS_BROWSER_ARTIFACTS") or os.path.join(h.REPO, "tests", "browser", "artifacts")
CHECKPOINT = "bas_fixture_sd15.safetensors"
#: training steps per phase: the page reloads after the third step, so some must be left (a step takes seconds
#: on two CPU cores); few, because a loaded machine makes each one slow
PHASE_STEPS = (4, 2)
CONCEPTS = ["figurine", "bowl", "stone"]
#: what marks a console message or page error as this pack's
OURS = ("ComfyUI-Break-A-Scene", "break_a_scene", "BreakAScene", "bas-live", "bas-chip")


@pytest.fixture(scope="module")
def report():
    server = h.ComfyServer(COMFYUI_PATH, checkpoints={CHECKPOINT: h.fixture_checkpoint("sd15")},
                           env=dict(h.SERVER_ENV))
    out = os.path.join(ARTIFACTS, "extract_and_generate")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    try:
        h.copy_scene_inputs(server.input_dir, "creature")
        server.start()
        cmd = ["node", SCRIPT, "--url", server.url, "--out", out, "--checkpoint", CHECKPOINT,
               "--phase1", str(PHASE_STEPS[0]), "--phase2", str(PHASE_STEPS[1])]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=h.REPO)
        with open(os.path.join(out, "report.json"), encoding="utf-8") as fh:
            data = json.load(fh)
        data["stdout"], data["stderr"], data["returncode"] = run.stdout[-4000:], run.stderr[-4000:], run.returncode
        data["server_history"] = server.get("/history")
        data["server_log"] = server.log_tail()
        print(f"\nbrowser screenshots: {out}")
        yield data
    finally:
        if os.path.exists(server.log_path):
            shutil.copyfile(server.log_path, os.path.join(out, "server.log"))
        server.cleanup()


def ours(entry: dict) -> bool:
    text = " ".join(str(v) for v in entry.values())
    return any(mark in text for mark in OURS)


def test_page_was_driven_to_the_end(report):
    assert report["returncode"] == 0 and not report["failed"], \
        f"{report['failed']}\n{report['stdout']}\n{report['stderr']}\n{report['server_log']}"
    statuses = [entry["status"]["status_str"] for entry in report["server_history"].values()]
    assert statuses == ["success"], (statuses, report["server_log"])


def test_no_console_errors_from_the_pack(report):
    mine = [e for e in report["console"] + report["pageErrors"] if ours(e)]
    assert not mine, json.dumps(mine, indent=1)


def test_template_browser_shows_the_thumbnail(report):
    thumbnail = report["thumbnail"]
    assert thumbnail.get("complete") and thumbnail.get("width", 0) > 0, thumbnail      # the card shows a picture
    served = [r for r in thumbnail["responses"]
              if r["url"].endswith("/api/workflow_templates/ComfyUI-Break-A-Scene/extract_and_generate.jpg")]
    assert served and served[-1]["status"] == 200 and served[-1]["type"] == "image/jpeg", thumbnail
    missing = [r["url"] for r in report["thumbnailResponses"] if r["status"] != 200]
    assert not missing, f"example workflows without a thumbnail (scripts/make_thumbnails.py): {missing}"


def test_live_view_chart_grows_and_maps_render_with_labels(report):
    before, training = report["liveBefore"], report["training"]
    assert before["visible"] and before["phase"] == "idle" and before["points"] == 0
    first, second, with_maps = training["first"], training["second"], training["withMaps"]
    assert first["phase"] == "training" and "steps/s" in first["status"] and "left" in first["status"]
    assert second["points"] > first["points"] >= 2, (first, second)
    assert second["run"] == first["run"]
    labels = [label["text"] for label in with_maps["labels"]]
    assert [text.split(" (")[0] for text in labels] == [f"<asset{i}> {name}" for i, name in enumerate(CONCEPTS)]
    assert len({label["color"] for label in with_maps["labels"]}) == 3
    assert [m["drawn"] for m in with_maps["maps"]] == ["map"] * 3
    assert all(m["w"] > 0 and m["h"] > 0 for m in with_maps["maps"])


def test_live_view_comes_back_after_a_reload(report):
    reload = report["reload"]
    assert reload["before"]["phase"] == "training"
    restored = reload["restored"]
    # A fresh page starts empty and picks up from the next event; on a fast machine that event may already have
    # arrived when the page is first looked at: then it shows the same run, not an older state.
    assert restored["phase"] == "idle" or (restored["run"] == reload["before"]["run"]
                                           and restored["points"] >= reload["before"]["points"]), restored
    after = reload["after"]
    assert after["run"] == reload["before"]["run"] and after["points"] > 0
    done = report["done"]
    assert done["phase"] == "done" and done["points"] == sum(PHASE_STEPS) and "Training done" in done["status"]
    assert [label["text"] for label in done["labels"]] == [f"<asset{i}> {n}" for i, n in enumerate(CONCEPTS)]


def test_handle_chips_insert_at_the_cursor(report):
    chips = report["chips"]
    assert [c["token"] for c in chips] == ["<asset0>", "<asset1>", "<asset2>"]
    assert [c["text"] for c in chips] == [f"<asset{i}> {name}" for i, name in enumerate(CONCEPTS)]
    assert len({c["color"] for c in chips}) == 3
    insert = report["chipInsert"]
    at = insert["at"]
    assert insert["after"] == insert["before"][:at] + "<asset1> " + insert["before"][at:]


def test_mask_inputs_follow_the_connections(report):
    loaded = report["maskInputsLoaded"]
    assert loaded == [{"name": f"mask_{i}", "linked": i < 3} for i in range(4)], \
        "a saved workflow with mask_0..mask_2 connected shows those and one free input"
    masks = report["maskInputs"]
    assert masks["start"] == [f"mask_{i}" for i in range(4)]
    assert masks["connected"] == [f"mask_{i}" for i in range(5)]
    assert masks["disconnected"] == [f"mask_{i}" for i in range(4)]
