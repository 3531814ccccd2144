"""The Flux example workflow end to end through a headless ComfyUI server, at tiny settings: the random-weight
Flux-shaped transformer, text encoders and VAE of ``flux_models.py`` in models/diffusion_models, text_encoders and
vae, the shared 'creature' scene, 64 px, 1 + 1 training steps, 2 sampling steps. Select with ``-k flux``.

The workflow runs as shipped except for one node: its DualCLIPLoader is swapped for a test-only loader
(``fixture_nodes/bas_tiny_flux_clip``) that calls the same ``comfy.sd.load_clip`` with the small text-encoder
configs, because stock DualCLIPLoader always builds the full T5-XXL (4.7B parameters), which a CPU test cannot
run. Everything else — Load Diffusion Model, Load VAE, the pack's nodes, KSampler, the export — is stock.

    COMFYUI_PATH=/work/shared/comfyui .cache/comfyui-venv/bin/python -m pytest -q tests/comfy/test_flux_server.py
"""
from __future__ import annotations

import os
import sys

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import server_harness as h  # noqa: E402

sys.path.insert(0, os.path.join(h.REPO, "scripts"))
import make_workflows  # noqa: E402

WORKFLOW = "flux_extract_and_generate"
TINY_CLIP_LOADER = "BASTestTinyFluxCLIPLoader"
CONCEPTS = ("figurine", "bowl", "stone")


@pytest.fixture(scope="module")
def files():
    from flux_models import save_flux_files

    return save_flux_files(os.path.join(h.CACHE, "flux-v1"))


@pytest.fixture(scope="module")
def server(files):
    models = {"diffusion_models": {make_workflows.FLUX_UNET: files["unet"]},
              "text_encoders": {make_workflows.FLUX_CLIP_L: files["clip_l"], make_workflows.FLUX_T5: files["t5xxl"]},
              "vae": {make_workflows.FLUX_VAE: files["vae"]}}
    tiny_clip = os.path.join(HERE, "fixture_nodes", "bas_tiny_flux_clip")
    with h.started_server(COMFYUI_PATH, models=models, custom_nodes={"bas_tiny_flux_clip": tiny_clip}) as srv:
        yield srv


def test_flux_workflow_uses_the_stock_flux_loaders_and_settings():
    """The template as shipped: Flux dev through Load Diffusion Model + DualCLIPLoader (flux) + Load VAE, training
    and sampling at 1024 px, Flux's sampler settings, LoRA (never full) and the prompt's guidance."""
    workflow = h.load_workflow(WORKFLOW)
    nodes = {n["type"]: n for n in workflow["nodes"]}
    assert "CheckpointLoaderSimple" not in nodes
    assert nodes["UNETLoader"]["widgets_values"] == [make_workflows.FLUX_UNET, "default"]
    assert nodes["DualCLIPLoader"]["widgets_values"][:3] == [make_workflows.FLUX_CLIP_L, make_workflows.FLUX_T5,
                                                              "flux"]
    assert nodes["VAELoader"]["widgets_values"] == [make_workflows.FLUX_VAE]
    assert nodes["EmptySD3LatentImage"]["widgets_values"][:2] == [1024, 1024]
    trainer = make_workflows.trainer_inputs(WORKFLOW)
    assert trainer["resolution"] == 1024 and trainer["mode"] == "lora"


def test_flux_workflow_end_to_end(server):
    api = h.ui_to_api(h.load_workflow(WORKFLOW), server.object_info)
    assert not h.api_problems(api, server.object_info, check_combos=True), \
        h.api_problems(api, server.object_info, check_combos=True)
    (loader_id,) = [k for k, node in api.items() if node["class_type"] == "DualCLIPLoader"]
    shipped = api[loader_id]["inputs"]
    assert shipped["type"] == "flux"
    api[loader_id] = {"class_type": TINY_CLIP_LOADER,
                      "inputs": {"clip_name1": shipped["clip_name1"], "clip_name2": shipped["clip_name2"]}}
    from safetensors import safe_open

    h.run_tiny_extraction(server, api, "EmptySD3LatentImage")
    meta, keys = h.read_pack(server, make_workflows.FLUX_PACK)
    assert meta["family"] == "flux" and {"handles.t5xxl", "handles.clip_l"} <= keys
    assert any(k.startswith("lora.unet.double_blocks.0.") for k in keys), sorted(keys)[:10]
    loras = os.listdir(os.path.join(server.base, "models", "loras"))
    assert loras == [f"{make_workflows.FLUX_PACK}.safetensors"]
    with safe_open(os.path.join(server.base, "models", "loras", loras[0]), framework="pt") as f:
        assert all(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in f.keys())
    embeddings = sorted(os.listdir(os.path.join(server.base, "models", "embeddings")))
    assert embeddings == sorted(f"{make_workflows.FLUX_PACK}_{c}.safetensors" for c in CONCEPTS)
    with safe_open(os.path.join(server.base, "models", "embeddings", embeddings[0]), framework="pt") as f:
        assert sorted(f.keys()) == ["clip_l", "t5xxl"]
