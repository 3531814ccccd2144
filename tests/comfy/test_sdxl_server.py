"""The SDXL example workflow end to end through a headless ComfyUI server, at tiny settings: the
random-weight SDXL-family fixture (Segmind Vega's depths, full CLIP-L and OpenCLIP-G), the shared 'creature'
scene, 64 px, 1 + 1 training steps, 2 sampling steps.

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_sdxl_server.py
"""
from __future__ import annotations

import os
import sys

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as h  # noqa: E402

sys.path.insert(0, os.path.join(h.REPO, "scripts"))
import make_workflows  # noqa: E402

SDXL = "bas_fixture_sdxl_vega.safetensors"
WORKFLOW = "sdxl_extract_and_generate"


@pytest.fixture(scope="module")
def server():
    with h.started_server(COMFYUI_PATH, checkpoints={SDXL: h.fixture_checkpoint("sdxl_vega")}) as srv:
        yield srv


def test_sdxl_workflow_defaults():
    """The template's own settings: 1024 px training and generation on an SDXL checkpoint."""
    workflow = h.load_workflow(WORKFLOW)
    nodes = {n["type"]: n for n in workflow["nodes"]}
    assert nodes["CheckpointLoaderSimple"]["widgets_values"] == [make_workflows.SDXL]
    assert nodes["EmptyLatentImage"]["widgets_values"][:2] == [1024, 1024]
    assert make_workflows.trainer_inputs(WORKFLOW)["resolution"] == 1024


def test_sdxl_workflow_end_to_end(server):
    api = h.ui_to_api(h.load_workflow(WORKFLOW), server.object_info)
    assert not h.api_problems(api, server.object_info), h.api_problems(api, server.object_info)
    h.patch_inputs(api, "CheckpointLoaderSimple", ckpt_name=SDXL)
    h.run_tiny_extraction(server, api, "EmptyLatentImage")
    meta, keys = h.read_pack(server, make_workflows.SDXL_PACK)
    assert meta["family"] == "sdxl" and {"handles.clip_l", "handles.clip_g"} <= keys
    loras = os.listdir(os.path.join(server.base, "models", "loras"))
    embeddings = os.listdir(os.path.join(server.base, "models", "embeddings"))
    assert loras == [f"{make_workflows.SDXL_PACK}.safetensors"]
    assert sorted(embeddings) == sorted(f"{make_workflows.SDXL_PACK}_{c}.safetensors"
                                        for c in ("figurine", "bowl", "stone"))
