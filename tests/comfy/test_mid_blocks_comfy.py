"""SDXL-family checkpoints with each kind of mid block ComfyUI knows (a transformer between two ResNets, one ResNet
only, no mid block: its transformer_depth_middle >= 1, -1, -2), their UNets built by ComfyUI's own UNetModel from
the Segmind-Vega-shaped test checkpoint: ComfyUI detects and samples each, and each trains two steps and samples
through the CLI (the single-file converter) and through the Trainer node (ComfyUI's model in place).

    COMFYUI_PATH=/work/shared/comfyui .cache/comfyui-venv/bin/python -m pytest -q tests/comfy/test_mid_blocks_comfy.py
"""
from __future__ import annotations

import os

import numpy as np
import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.sd  # noqa: E402

from helpers import sample_with_pack, scene_inputs  # noqa: E402

UNET = "model.diffusion_model."
KINDS = {"transformer": None, "resnet-only": -1, "none": -2}     # None: the test checkpoint's own (depth 2)


def _variant_unet(base: dict, depth_middle: int) -> dict:
    """The base UNet with the mid block ComfyUI builds for ``depth_middle``: ComfyUI's own UNetModel for the
    detected config, loaded (strictly) from the base weights of every part it still has."""
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model_config = comfy.model_detection.model_config_from_unet(base, UNET)
    assert type(model_config).__name__ == "Segmind_Vega"
    config = dict(model_config.unet_config, transformer_depth_middle=depth_middle)
    unet = UNetModel(**config, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)
    names = set(unet.state_dict())
    weights = {k[len(UNET):]: v for k, v in base.items() if k.startswith(UNET) and k[len(UNET):] in names}
    assert set(weights) == names, sorted(names - set(weights))[:3]
    unet.load_state_dict(weights, strict=True, assign=True)
    return {UNET + k: v.contiguous() for k, v in unet.state_dict().items()}


@pytest.fixture(scope="module", params=list(KINDS))
def checkpoint(request, checkpoint_path, tmp_path_factory):
    """(kind, path) of the checkpoint with that kind of mid block. A parametrised module fixture, so that pytest runs
    one kind's tests together and each variant (an SDXL-size file) is written, used and removed before the next."""
    from safetensors.torch import load_file, save_file

    kind = request.param
    source = checkpoint_path("sdxl_vega")
    if KINDS[kind] is None:
        yield kind, source
        return
    base = load_file(source)
    state = {k: v for k, v in base.items() if not k.startswith(UNET)}
    state.update(_variant_unet(base, KINDS[kind]))
    del base
    path = str(tmp_path_factory.mktemp("mid_blocks") / f"vega_{kind}.safetensors")
    save_file(state, path)
    del state
    yield kind, path
    os.remove(path)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "img.png")
    for i, (left, right) in enumerate(((4, 30), (34, 60))):
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[16:48, left:right] = 255
        Image.fromarray(mask).save(folder / f"mask{i}.png")
    return folder


def _middle(model) -> list[str]:
    block = model.model.diffusion_model.middle_block
    return [] if block is None else [type(layer).__name__ for layer in block]


def test_comfy_detects_trains_in_place_and_samples(bas, run_node, checkpoint):
    kind, path = checkpoint
    with torch.inference_mode():            # as ComfyUI's Load Checkpoint node runs
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                                    embedding_directory=None)
    try:
        assert type(model.model.model_config).__name__ == "Segmind_Vega"
        assert _middle(model) == {"transformer": ["ResBlock", "SpatialTransformer", "ResBlock"],
                                  "resnet-only": ["ResBlock"], "none": []}[kind]
        scene = run_node(bas.classes["MaskedConceptLoader"], **scene_inputs()).args[0]
        concepts = run_node(bas.classes["BreakASceneTrainer"], model=model, clip=clip, vae=vae, scene=scene,
                            pack_name=f"mid_{kind}", phase1_steps=1, phase2_steps=1, phase1_lr=5e-4, phase2_lr=0.0,
                            mode="lora", lora_rank=4, train_text_encoder=False, attention_loss_weight=0.01,
                            masked_loss=True, union_sampling=True, resolution=64, seed=0, retrain=True).args[0]
        # LoRA goes on every attention projection: the mid block's exactly when it has a transformer
        assert any(k.startswith("unet.mid_block.") for k in concepts.pack.lora) == (kind == "transformer")
        latent = sample_with_pack(bas, run_node, model, clip, concepts, "a photo of <cat>")
        assert torch.isfinite(latent).all() and latent.abs().max() > 0
    finally:
        mm.unload_all_models()


def test_cli_converts_trains_and_samples(checkpoint, scene_dir, tmp_path):
    from comfy_fixtures import comfy_tokenizer_dir

    from bas_engine.cli import main
    from bas_engine.ldm import load_single_file
    from bas_engine.pack import load_pack

    kind, path = checkpoint
    tokenizer = comfy_tokenizer_dir(COMFYUI_PATH)
    converted = load_single_file(path, tokenizer)
    assert converted.unet.config.mid_block_type == {"transformer": "UNetMidBlock2DCrossAttn",
                                                    "resnet-only": "UNetMidBlock2D", "none": None}[kind]
    del converted
    pack = tmp_path / "pack.safetensors"
    assert main(["extract", str(scene_dir), "--model", path, "--tokenizer", tokenizer, "--out", str(pack),
                 "--names", "cat,bowl", "--phase1-steps", "1", "--phase2-steps", "1", "--resolution", "64",
                 "--lora-rank", "4", "--device", "cpu"]) == 0
    trained = load_pack(str(pack))
    assert trained.meta["family"] == "sdxl"
    assert any(k.startswith("unet.mid_block.") for k in trained.lora) == (kind == "transformer")
    out = tmp_path / "images"
    assert main(["generate", str(pack), "--model", path, "--tokenizer", tokenizer,
                 "--prompt", "a photo of <cat>", "--out", str(out), "--steps", "2", "--size", "64",
                 "--device", "cpu"]) == 0
    assert len(list(out.glob("*.png"))) == 1
