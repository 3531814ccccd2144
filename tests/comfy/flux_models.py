"""Random-weight Flux-shaped models built with ComfyUI's own classes, small enough for the CPU.

The pinned ComfyUI fixes Flux's widths when it detects a transformer (hidden 3072, 24 heads, T5 context 4096,
``model_detection.detect_unet_config``); what it reads from the weights is the number of double / single blocks,
the pooled vector's width and whether there is a guidance input. So the smallest Flux it detects has one double
block (here also one single block: ~0.55B parameters, ~1.1 GB in bf16). The text encoders are ComfyUI's
``FluxClipModel`` with small configs given through ``model_options`` (``<name>_model_config``, read by
``SDClipModel``): CLIP-L 2 layers x 64 wide, T5 one block 4096 wide (the width the transformer reads). The VAE is
Flux's (16 latent channels, downscale 8).
"""
from __future__ import annotations

import os

import torch

#: the small text-encoder configs, as ``comfy.sd.load_clip(..., model_options=text_options())`` takes them
CLIP_L_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2,
                 "projection_dim": 64}
T5_CONFIG = {"num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 64}


def text_options() -> dict:
    """``model_options`` for ``comfy.sd.load_clip`` that build the small encoders. CLIP-L's goes under
    "model_config": for a CLIP-L state dict ComfyUI sets ``clip_l_model_config`` from that key (adding the position
    count it reads off the weights, ``long_clipl.model_options_long_clip``), replacing one given directly."""
    return {"model_config": dict(CLIP_L_CONFIG), "t5xxl_model_config": dict(T5_CONFIG)}


def _randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state dict with random weights: N(0, 0.02) matrices, zero biases, unit norm scales."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("scale",) or "norm" in name and leaf == "weight" and tensor.ndim == 1:
            value = torch.ones(tensor.shape)
        elif leaf == "bias" or tensor.ndim == 1:
            value = torch.zeros(tensor.shape)
        else:
            value = torch.randn(tensor.shape, generator=generator) * 0.02
        state[name] = value.to(tensor.dtype)
    return state


def flux_transformer_state(seed: int = 0, double_blocks: int = 1, single_blocks: int = 1, guidance: bool = True,
                           pooled_width: int = CLIP_L_CONFIG["hidden_size"]) -> dict[str, torch.Tensor]:
    """A Flux transformer's weights (the keys of a diffusion-model file, as Load Diffusion Model reads it)."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    model = Flux(in_channels=16, out_channels=16, vec_in_dim=pooled_width, context_in_dim=4096, hidden_size=3072,
                 mlp_ratio=4.0, num_heads=24, depth=double_blocks, depth_single_blocks=single_blocks,
                 axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=guidance,
                 dtype=torch.bfloat16, device="cpu", operations=comfy.ops.disable_weight_init)
    state = _randomize(model, seed)
    del model
    return state


def flux_text_states(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(CLIP-L, T5) weights of the small text encoders, as ComfyUI's CLIP loaders read the two files."""
    import json

    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    import comfy.text_encoders.t5

    folder = os.path.dirname(comfy.sd1_clip.__file__)
    with open(os.path.join(folder, "sd1_clip_config.json")) as fh:
        clip_config = {**json.load(fh), **CLIP_L_CONFIG}
    with open(os.path.join(folder, "text_encoders", "t5_config_xxl.json")) as fh:
        t5_config = {**json.load(fh), **T5_CONFIG}
    ops = comfy.ops.disable_weight_init
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float16, "cpu", ops)
    t5 = comfy.text_encoders.t5.T5(t5_config, torch.float16, "cpu", ops)
    return _randomize(clip, seed + 1), _randomize(t5, seed + 2)


def flux_vae_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Flux's VAE layout (ComfyUI's AutoencodingEngine without quant convs, 16 latent channels)."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    engine = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    return _randomize(engine, seed + 3)


def save_flux_files(folder: str, seed: int = 0, **shape) -> dict[str, str]:
    """The four files a Flux graph loads, written to ``folder``: {"unet", "clip_l", "t5xxl", "vae": path}."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    clip_l, t5 = flux_text_states(seed)
    parts = {"unet": flux_transformer_state(seed, **shape), "clip_l": clip_l, "t5xxl": t5,
             "vae": flux_vae_state(seed)}
    paths = {}
    for name, state in parts.items():
        paths[name] = os.path.join(folder, f"tiny_flux_{name}.safetensors")
        if not os.path.exists(paths[name]):
            save_file({k: v.contiguous() for k, v in state.items()}, paths[name] + ".tmp")
            os.replace(paths[name] + ".tmp", paths[name])
    return paths


def save_flux_checkpoint(path: str, seed: int = 0, **shape) -> str:
    """An all-in-one Flux file as Load Checkpoint reads it: the transformer under ``model.diffusion_model.`` and the
    VAE under ``vae.`` (the same weights as ``save_flux_files``). No text encoders: a checkpoint's T5 is always
    built at T5-XXL's size (``supported_models.Flux.clip_target``), too large for the CPU tests, and with no
    ``text_encoders.`` keys ComfyUI gives no CLIP, as for the many Flux checkpoints shipped without one."""
    from safetensors.torch import save_file

    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state = {f"model.diffusion_model.{k}": v.contiguous() for k, v in flux_transformer_state(seed, **shape).items()}
        state.update({f"vae.{k}": v.contiguous() for k, v in flux_vae_state(seed).items()})
        save_file(state, path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def load_flux(paths: dict[str, str]):
    """(MODEL, CLIP, VAE) through ComfyUI's own loaders, as Load Diffusion Model + DualCLIPLoader (type flux, with
    the small configs) + Load VAE load them, under inference mode as nodes run."""
    import comfy.sd
    import comfy.utils

    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(paths["unet"])
        clip = comfy.sd.load_clip([paths["clip_l"], paths["t5xxl"]], clip_type=comfy.sd.CLIPType.FLUX,
                                  model_options=text_options())
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(paths["vae"]))
    return model, clip, vae
