#!/usr/bin/env python3
"""Write example_workflows/<name>.jpg, the thumbnails ComfyUI's template browser shows next to each example
workflow (the pinned frontend asks for /api/workflow_templates/<pack folder>/<name>.jpg).

Each one is a real screenshot: a headless ComfyUI server with this pack (tests/comfy/server_harness.py, the
random-weight SD1.5-shaped fixture checkpoint and the creature scene as inputs) is opened in Chromium
(tests/browser/ui_check.mjs --mode thumbnails), the workflow is loaded and the whole graph is captured, then
cropped to a square and saved as a 512 px JPEG.

    <ComfyUI's python> scripts/make_thumbnails.py [NAME ...]

Needs what the browser tests need (docs/COMFYUI_TESTS.md): COMFYUI_PATH (default ../shared/comfyui), run with
ComfyUI's interpreter, /usr/bin/chromium, node and tests/browser/node_modules (npm install in tests/browser).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "comfy"), os.path.join(ROOT, "tests"), os.path.join(ROOT, "scripts")]

import make_workflows  # noqa: E402
import server_harness as h  # noqa: E402

SIZE = 512
#: the node each thumbnail is centred on (what the workflow is about)
FOCUS = {"extract_and_generate": "BreakASceneTrainer", "reuse_saved_pack": "HandleInjector",
         "controlnet": "ControlNetApplyAdvanced", "local_edit": "SetLatentNoiseMask",
         "stock_nodes_only": "LoraLoader", "sdxl_extract_and_generate": "BreakASceneTrainer",
         "flux_extract_and_generate": "BreakASceneTrainer"}
CHECKPOINT = "bas_fixture_sd15.safetensors"


def to_thumbnail(png: str, jpg: str) -> None:
    """Centre square crop of the screenshot, SIZE px, JPEG written atomically."""
    from PIL import Image

    picture = Image.open(png).convert("RGB")
    side = min(picture.size)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    picture = picture.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.LANCZOS)
    tmp = jpg + ".part"
    picture.save(tmp, "JPEG", quality=85, optimize=True)
    os.replace(tmp, jpg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="workflows to shoot (default: all of make_workflows.WORKFLOWS)")
    args = parser.parse_args()
    names = args.names or sorted(make_workflows.WORKFLOWS)
    comfy = os.environ.get("COMFYUI_PATH") or os.path.join(os.path.dirname(ROOT), "shared", "comfyui")
    server = h.ComfyServer(comfy, checkpoints={CHECKPOINT: h.fixture_checkpoint("sd15")})
    try:
        h.copy_scene_inputs(server.input_dir, "creature")
        h.write_edit_target(server.input_dir, "creature", mask_index=1, size=64, name="edit_target.png")
        server.start()
        with tempfile.TemporaryDirectory(prefix="bas-thumbs-") as out:
            import json

            cmd = ["node", os.path.join(ROOT, "tests", "browser", "ui_check.mjs"), "--mode", "thumbnails",
                   "--url", server.url, "--out", out, "--dir", h.EXAMPLE_WORKFLOWS, "--workflows", json.dumps(names),
                   "--focus", json.dumps(FOCUS)]
            subprocess.run(cmd, check=True, timeout=600)
            for name in names:
                target = os.path.join(h.EXAMPLE_WORKFLOWS, f"{name}.jpg")
                to_thumbnail(os.path.join(out, f"{name}.png"), target)
                print(f"wrote {os.path.relpath(target, ROOT)}")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
