"""LDM <-> diffusers conversion (bas_engine.ldm) on tiny models; no ComfyUI, no hub."""
from __future__ import annotations

import pytest
import torch

from bas_engine import ldm
from bas_engine.errors import ModelError
from bas_engine.testing import components_to_ldm

from comfy_fixtures import tiny_components, write_tiny_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


CASES = [
    dict(family="sd1", levels=2),
    dict(family="sd1", levels=3, attention_levels=2, layers_per_block=2),   # SD1 layout: last level no attention
    dict(family="sd2", levels=2),
    dict(family="sd2", levels=3, layers_per_block=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_round_trip_exact(case, tok_dir):
    comps = tiny_components(**case)
    sd = components_to_ldm(comps)
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in sd)
    back = ldm.components_from_ldm(sd, tok_dir, text_encoder_config=comps.text_encoder.config.to_dict())
    assert back.family == case["family"]
    _same_state(comps.unet, back.unet)
    _same_state(comps.vae, back.vae)
    _same_state(comps.text_encoder, back.text_encoder)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                "use_linear_projection", "cross_attention_dim"):
        a, b = back.unet.config[key], comps.unet.config[key]
        assert (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b), key
    # and back again: LDM -> diffusers -> LDM is the identity on the original-layout dict
    sd2 = components_to_ldm(back)
    assert sorted(sd) == sorted(sd2)
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k


def test_forward_equal_after_round_trip(tok_dir):
    comps = tiny_components(family="sd1", levels=2)
    back = ldm.components_from_ldm(components_to_ldm(comps), tok_dir)
    torch.manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 64)
    with torch.no_grad():
        assert torch.equal(comps.unet(x, t, ctx).sample, back.unet(x, t, ctx).sample)
        ids = back.tokenizer("a photo of x", padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.equal(comps.text_encoder(ids)[0], back.text_encoder(ids)[0])


def test_unet_key_map_matches_diffusers_helper():
    """Our diffusers->LDM map is the exact inverse of diffusers' convert_ldm_unet_checkpoint."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    comps = tiny_components(family="sd1", levels=3, attention_levels=2, layers_per_block=2)
    mapping = ldm.diffusers_to_ldm_unet_keys(comps.unet)
    assert len(set(mapping.values())) == len(mapping)
    ldm_names = {"model.diffusion_model." + v: v for v in mapping.values()}
    forward = convert_ldm_unet_checkpoint(ldm_names, dict(comps.unet.config))   # values are the LDM names
    assert forward == mapping
    # the config-only form (meta-device build) gives the same map
    assert ldm.diffusers_to_ldm_unet_keys(dict(comps.unet.config)) == mapping


def test_unet_config_from_weights_and_comfy_style_config(tok_dir):
    comps = tiny_components(family="sd1", levels=3, attention_levels=2, layers_per_block=2)
    sd = components_to_ldm(comps)
    unet_sd = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    cfg = ldm.ldm_unet_config_from_weights(unet_sd)
    assert cfg["model_channels"] == 32 and cfg["channel_mult"] == [1, 2, 2]
    assert cfg["num_res_blocks"] == [2, 2, 2] and cfg["transformer_depth"] == [1, 1, 1, 1, 0, 0]
    assert cfg["transformer_depth_middle"] == 1 and cfg["context_dim"] == 64
    assert cfg["use_linear_in_transformer"] is False
    # ComfyUI-style config (per-block lists) and yaml style (ints + attention_resolutions) agree
    comfy_cfg = dict(cfg, num_heads=4, num_head_channels=-1)
    yaml_cfg = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2,
                    attention_resolutions=[1, 2], transformer_depth=1, context_dim=64, num_heads=4)
    a = ldm.diffusers_unet_config(comfy_cfg)
    b = ldm.diffusers_unet_config(yaml_cfg)
    assert a == b
    assert a["attention_head_dim"] == 4
    back = ldm.components_from_ldm(sd, tok_dir, unet_config=comfy_cfg)
    _same_state(comps.unet, back.unet)
    assert back.unet.config.attention_head_dim == 4     # heads are not in the weights: the config decides
    assert ldm.components_from_ldm(sd, tok_dir).unet.config.attention_head_dim == 8   # SD convention


def test_sd_configs_without_weights():
    sd15 = dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4, 4],
                num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], context_dim=768,
                use_linear_in_transformer=False, num_heads=8, num_head_channels=-1)
    c = ldm.diffusers_unet_config(sd15)
    assert c["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert c["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert c["attention_head_dim"] == 8 and c["block_out_channels"] == [320, 640, 1280, 1280]
    sd21 = dict(sd15, context_dim=1024, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64)
    c2 = ldm.diffusers_unet_config(sd21)
    assert c2["attention_head_dim"] == [5, 10, 20, 20] and c2["use_linear_projection"] and c2["upcast_attention"]
    # full SD1.5 key map from the config alone (meta device, no weights); spot checks against known names
    m = ldm.diffusers_to_ldm_unet_keys(c)
    assert m["down_blocks.0.attentions.1.proj_in.weight"] == "input_blocks.2.1.proj_in.weight"
    assert m["down_blocks.2.downsamplers.0.conv.weight"] == "input_blocks.9.0.op.weight"
    assert m["down_blocks.3.resnets.1.conv2.bias"] == "input_blocks.11.0.out_layers.3.bias"
    assert m["mid_block.resnets.1.time_emb_proj.weight"] == "middle_block.2.emb_layers.1.weight"
    assert m["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.1.conv.weight"
    assert m["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert m["up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight"] == \
        "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"
    assert m["up_blocks.1.resnets.0.conv_shortcut.weight"] == "output_blocks.3.0.skip_connection.weight"
    assert len(m) == 686


def test_text_encoder_maps():
    from bas_engine.families import SD1, SD2

    comps = tiny_components(family="sd1")
    m = ldm.diffusers_to_comfy_clip_keys(comps.text_encoder, SD1.text_encoders[0])
    assert m["embeddings.token_embedding.weight"] == "clip_l.transformer.text_model.embeddings.token_embedding.weight"
    assert ldm.diffusers_to_comfy_clip_keys(["encoder.layers.0.mlp.fc1.weight"], SD2.text_encoders[0]) == {
        "encoder.layers.0.mlp.fc1.weight": "clip_h.transformer.text_model.encoder.layers.0.mlp.fc1.weight"}
    checkpoint = components_to_ldm(comps)
    assert "cond_stage_model.transformer.text_model.final_layer_norm.bias" in checkpoint


def test_single_file_and_errors(tmp_path, tok_dir):
    from safetensors.torch import save_file

    comps = tiny_components(family="sd2", prediction_type="v_prediction")
    sd = components_to_ldm(comps, dtype=torch.float16)
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path))
    eps = ldm.load_single_file(str(path), tok_dir)
    assert eps.prediction_type == "epsilon" and eps.family == "sd2"
    assert eps.unet.dtype == torch.float32
    assert eps.tokenizer.pad_token == "!"
    v = ldm.load_single_file(str(path), tok_dir, prediction_type="v_prediction")
    assert v.prediction_type == "v_prediction"
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": sd}, str(ckpt))
    c = ldm.load_single_file(str(ckpt), tok_dir)
    _same_state(eps.unet, c.unet)
    with pytest.raises(ModelError):
        ldm.components_from_ldm({k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}, tok_dir)
    with pytest.raises(ModelError):
        ldm.load_single_file(str(tmp_path / "missing.safetensors"), tok_dir)
    with pytest.raises(ModelError):
        ldm.make_scheduler("sample")


def test_trainable_when_built_inside_inference_mode(tok_dir):
    """ComfyUI runs nodes under torch.inference_mode(): the built modules must still be trainable."""
    comps = tiny_components(family="sd1")
    with torch.inference_mode():
        sd = components_to_ldm(comps)
        back = ldm.components_from_ldm(sd, tok_dir)
    assert not any(p.is_inference() for p in back.unet.parameters())
    assert not any(p.is_inference() for p in back.text_encoder.parameters())
    back.unet.requires_grad_(True)
    loss = back.unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 64)).sample.square().mean()
    loss.backward()
    assert back.unet.conv_in.weight.grad is not None
