"""Every kind of mid block (with cross-attention, one ResNet only, none: ComfyUI's transformer_depth_middle >= 1,
-1, -2; diffusers' UNetMidBlock2DCrossAttn, UNetMidBlock2D, None) in the SD1, SD2 and SDXL layouts: an original
single-file checkpoint converts to the matching diffusers UNet bit for bit, and the engine trains on it (the
attention loss reads no mid block that has no cross-attention). The same checkpoints built by ComfyUI's own classes,
trained through the CLI and the Trainer node: tests/comfy/test_mid_blocks_comfy.py."""
from __future__ import annotations

import pytest
import torch

from bas_engine import ldm
from bas_engine.diffusers_attention import cross_attention_layers
from bas_engine.errors import ModelError
from bas_engine.testing import components_to_ldm, tiny_sdxl_components, write_tiny_tokenizer
from bas_engine.trainer import train
from bas_engine.weight_names import ldm_to_diffusers_unet_name

from comfy_fixtures import tiny_components
from engine_helpers import assert_same_state, make_scene, small_config, state_snapshot

KINDS = {"cross-attention": ("UNetMidBlock2DCrossAttn", 1), "resnet-only": ("UNetMidBlock2D", ldm.MID_RESNET_ONLY),
         "none": (None, ldm.MID_NONE)}


def _components(family: str, mid: str | None):
    if family == "sdxl":
        return tiny_sdxl_components(mid_block_type=mid)
    return tiny_components(family=family, levels=2, mid_block_type=mid)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_mid_block_kind_converts_bit_for_bit(family, kind, tok_dir, tmp_path):
    mid, depth = KINDS[kind]
    components = _components(family, mid)
    state = components_to_ldm(components)
    unet_keys = [k.removeprefix("model.diffusion_model.") for k in state if k.startswith("model.diffusion_model.")]
    found = ldm.middle_block_depth(unet_keys)
    assert found >= 1 if depth >= 1 else found == depth       # with a transformer: its depth (tiny SDXL: 2)
    config = ldm.ldm_unet_config_from_weights({k: state["model.diffusion_model." + k] for k in unet_keys})
    assert config["transformer_depth_middle"] == found
    te_config = [components.text_encoder.config.to_dict()]
    if family == "sdxl":
        te_config.append(components.text_encoder_2.config.to_dict())
    back = ldm.components_from_ldm(state, tok_dir, text_encoder_config=te_config if family == "sdxl" else te_config[0])
    assert back.unet.config.mid_block_type == mid
    assert_same_state(back.unet, state_snapshot(components.unet))
    # the pure name map agrees with the converter on every weight of this layout
    layers = components.unet.config.layers_per_block
    mapped = {ldm_to_diffusers_unet_name(k, layers) for k in unet_keys}
    assert mapped == set(components.unet.state_dict())


@pytest.mark.parametrize("kind", ["resnet-only", "none"])
def test_training_reads_no_mid_block_without_attention(kind, tmp_path):
    mid, _ = KINDS[kind]
    components = _components("sdxl", mid)
    # even when the mid block is asked for, a mid block without cross-attention has no layer to give
    assert not any(name.startswith("mid_block") for name in
                   cross_attention_layers(components.unet, 4, ("down", "up", "mid")))
    pack = train(components, make_scene(), small_config(phase1_steps=1, phase2_steps=1), device="cpu",
                 cache_dir=str(tmp_path))
    assert pack.lora and not any(".mid_block." in k for k in pack.lora)
    assert torch.isfinite(torch.tensor(list(pack.meta["losses"].values()))).all()


def test_a_layout_the_converter_cannot_map_names_what_it_found(tok_dir):
    """A mid block whose transformer is deeper than the deepest level's (diffusers holds one depth for both)."""
    base = dict(model_channels=320, use_linear_in_transformer=True, context_dim=2048, adm_in_channels=2816,
                num_res_blocks=2, num_head_channels=64, channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 4, 4])
    with pytest.raises(ModelError, match=r"mid block has a transformer of depth 10 and its deepest level one of "
                                         r"depth 4"):
        ldm.diffusers_unet_config(dict(base, transformer_depth_middle=10), family="sdxl")
    with pytest.raises(ModelError, match=r"transformer of depth 0; supported"):
        ldm.diffusers_unet_config(dict(base, transformer_depth_middle=0), family="sdxl")
    described = ldm.describe_unet_layout(dict(base, transformer_depth_middle=-1))
    assert "a mid block of one ResNet" in described and "[320, 640, 1280] channels" in described
