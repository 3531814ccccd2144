"""Builders for test models: random-weight LDM single-file checkpoints and a tokenizer folder.

Plain helpers (no ComfyUI import).  The SD-shaped checkpoints have the widths ComfyUI's model detection
keys on (model_channels 320, context 768 / 1024, full-size CLIP-L / OpenCLIP-H text encoders) but fewer
UNet levels, so they are small and quick to build; ``comfy.sd.load_checkpoint_guess_config`` detects them
as SD15 and SD20 (v-prediction).  The ``tiny_*`` builders make models small enough for engine unit tests.
"""
from __future__ import annotations

import json
import os

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from bas_engine.ldm import make_scheduler
from bas_engine.testing import components_to_ldm
from bas_engine.components import SDComponents


# ------------------------------------------------------------------------------------------------ tokenizer

def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_tokenizer(path: str, merges: tuple[str, ...] = ()) -> str:
    """A byte-level CLIP BPE tokenizer with the 512 single-byte tokens plus the two specials (514 ids, or a
    few more with ``merges`` such as ``("c a", "ca t</w>")``).  Any text tokenizes, one id per character."""
    os.makedirs(path, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars]
    for m in merges:
        vocab.append(m.replace(" ", ""))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump({t: i for i, t in enumerate(vocab)}, fh, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "do_lower_case": True}, fh)
    with open(os.path.join(path, "special_tokens_map.json"), "w", encoding="utf-8") as fh:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"}, fh)
    return path


def comfy_tokenizer_dir(comfy_path: str | None = None) -> str:
    """ComfyUI's bundled CLIP tokenizer folder (tests only; the real 49408-token CLIP vocabulary)."""
    comfy_path = comfy_path or os.environ["COMFYUI_PATH"]
    return os.path.join(comfy_path, "comfy", "sd1_tokenizer")


# ------------------------------------------------------------------------------------------------ modules

def _randomize(module: torch.nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Random weights everywhere (including zero-initialised output convs and norms) so that every
    parameter matters in comparisons; norms get 1 + noise, biases small noise."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                fan_in = p[0].numel()
                p.copy_(noise / max(fan_in, 1) ** 0.5)


def build_components(*, family: str = "sd1", unet: dict, vae: dict, text_encoder: dict, prediction_type: str,
                     tokenizer=None, seed: int = 0) -> SDComponents:
    g = torch.Generator().manual_seed(seed)
    u = UNet2DConditionModel(**unet)
    v = AutoencoderKL(**vae)
    t = CLIPTextModel(CLIPTextConfig(**text_encoder))
    for m in (u, v, t):
        _randomize(m, g)
        m.eval()
    return SDComponents(unet=u, vae=v, text_encoder=t, tokenizer=tokenizer,
                        noise_scheduler=make_scheduler(prediction_type), family=family)


TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=1, norm_num_groups=32, sample_size=32)

def sd_vae_config() -> dict:
    """The SD VAE (84M parameters): ComfyUI builds its VAE from a fixed config, so fixtures need this one."""
    from bas_engine.ldm import _static_config

    return _static_config("sd_vae.json")


def tiny_unet_config(*, levels: int = 2, linear: bool = False, context: int = 32, layers_per_block: int = 1,
                     attention_levels: int | None = None, mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
                     ) -> dict:
    """Diffusers config of a tiny SD-like UNet: 32/64/... channels, attention on the first
    ``attention_levels`` levels (all by default), the last level without attention when fewer; the mid block of
    diffusers' ``mid_block_type`` (with cross-attention, ``UNetMidBlock2D``: one ResNet, or None)."""
    channels = tuple(32 * (2 ** min(i, 1)) for i in range(levels))
    att = levels if attention_levels is None else attention_levels
    down = tuple("CrossAttnDownBlock2D" if i < att else "DownBlock2D" for i in range(levels))
    return dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=channels,
                down_block_types=down, up_block_types=tuple(
                    "CrossAttnUpBlock2D" if t == "CrossAttnDownBlock2D" else "UpBlock2D" for t in reversed(down)),
                layers_per_block=layers_per_block, cross_attention_dim=context, attention_head_dim=8,
                use_linear_projection=linear, norm_num_groups=32, mid_block_type=mid_block_type)


def tiny_text_encoder_config(*, family: str = "sd1", hidden: int = 64, layers: int = 2, vocab: int = 514) -> dict:
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=max(1, hidden // 64), max_position_embeddings=77,
                hidden_act="gelu" if family == "sd2" else "quick_gelu", bos_token_id=0, eos_token_id=2,
                pad_token_id=1)


def tiny_components(*, family: str = "sd1", levels: int = 2, prediction_type: str = "epsilon",
                    attention_levels: int | None = None, layers_per_block: int = 1, seed: int = 0,
                    mid_block_type: str | None = "UNetMidBlock2DCrossAttn") -> SDComponents:
    hidden = 64
    return build_components(
        family=family,
        unet=tiny_unet_config(levels=levels, linear=(family == "sd2"), context=hidden,
                              layers_per_block=layers_per_block, attention_levels=attention_levels,
                              mid_block_type=mid_block_type),
        vae=TINY_VAE, text_encoder=tiny_text_encoder_config(family=family, hidden=hidden),
        prediction_type=prediction_type, seed=seed)


# ------------------------------------------------------------------------------------------------ SD-shaped

#: fixture UNet layouts: (channel_mult, layers_per_block, levels with cross-attention)
SD_LAYOUTS = {
    ("sd1", 2): ((1, 2), 2, 2),           # two levels, 157M parameters
    ("sd1", 3): ((1, 1, 2), 2, 3),        # three levels: cross-attention at 1/4 latent resolution, 187M
    ("sd2", 4): ((1, 1, 1, 1), 2, 3),     # the SD2 block layout at 320 channels everywhere, 114M
}


def sd_unet_config(family: str, levels: int) -> dict:
    """SD1.5 / SD2.x UNet widths (320 base, context 768/1024) in a smaller layout (see SD_LAYOUTS).  The SD2
    one keeps SD2's 12 output blocks: ComfyUI tells SD2 v-prediction from epsilon by the spread of
    output_blocks.11.1.transformer_blocks.0.norm1.bias."""
    try:
        mult, lpb, att = SD_LAYOUTS[(family, levels)]
    except KeyError:
        raise ValueError(f"no fixture layout for {family} with {levels} levels; have {sorted(SD_LAYOUTS)}") from None
    levels = len(mult)
    down = tuple("CrossAttnDownBlock2D" if i < att else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if t == "CrossAttnDownBlock2D" else "UpBlock2D" for t in reversed(down))
    channels = tuple(320 * m for m in mult)
    cfg = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=channels,
               down_block_types=down, up_block_types=up, layers_per_block=lpb, norm_num_groups=32)
    if family == "sd1":
        cfg.update(cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)
    else:
        cfg.update(cross_attention_dim=1024, attention_head_dim=[c // 64 for c in channels],
                   use_linear_projection=True, upcast_attention=True)
    return cfg


def sd_text_encoder_config(family: str) -> dict:
    from bas_engine.ldm import _static_config

    return _static_config("sd2_text_encoder.json" if family == "sd2" else "sd1_text_encoder.json")


def write_sd_checkpoint(path: str, *, family: str = "sd1", levels: int | None = None, seed: int = 0,
                        dtype: torch.dtype = torch.float16) -> str:
    """Write a random-weight SD1.5-shaped (epsilon) or SD2-shaped (v-prediction) LDM .safetensors file.

    For SD2 the norm1 biases of output block 11 get a spread > 0.09 so ComfyUI picks v-prediction."""
    from safetensors.torch import save_file

    if family == "sdxl":
        return write_sdxl_checkpoint(path, seed=seed, dtype=dtype)
    levels = levels or (4 if family == "sd2" else 2)
    comps = build_components(family=family, unet=sd_unet_config(family, levels), vae=sd_vae_config(),
                             text_encoder=sd_text_encoder_config(family),
                             prediction_type="v_prediction" if family == "sd2" else "epsilon", seed=seed)
    sd = components_to_ldm(comps, dtype=dtype)
    if family == "sd2":
        key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
        if key not in sd:
            raise RuntimeError("SD2 fixture layout has no output block 11 with attention")
        g = torch.Generator().manual_seed(seed + 1)
        sd[key] = (0.2 * torch.randn(sd[key].shape, generator=g)).to(dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(sd, path)
    return path


def sdxl_distilled_unet_config() -> dict:
    """The smallest UNet ComfyUI detects as an SDXL-family model: Segmind Vega's transformer depths (input blocks
    [0, 0, 1, 1, 2, 2], matched by comfy/supported_models.py) at 320 channels on every level (ComfyUI matches
    model_channels, context 2048, ADM 2816, linear projections and depths, not the channel multipliers), 5 heads of
    64 channels, SDXL's added embedding (6 time ids x 256 + 1280 pooled). About 60M parameters."""
    return dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 320, 320), layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 1, 2), attention_head_dim=(5, 5, 5), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, norm_num_groups=32)


def sdxl_components(seed: int = 0, dtype: torch.dtype = torch.float16) -> SDComponents:
    """Random weights: the distilled SDXL-family UNet above, the SD VAE, full-size CLIP-L and OpenCLIP-G (ComfyUI
    builds SDXL's text encoders from fixed configs), the G encoder with its 1280x1280 projection. Built directly in
    ``dtype`` (fp16: about 2 GB, what the checkpoint stores)."""
    from transformers import CLIPTextModelWithProjection

    from bas_engine.ldm import _static_config

    g = torch.Generator().manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = UNet2DConditionModel(**sdxl_distilled_unet_config())
        vae = AutoencoderKL(**dict(sd_vae_config(), scaling_factor=0.13025))
        clip_l = CLIPTextModel(CLIPTextConfig(**_static_config("sd1_text_encoder.json")))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**_static_config("sdxl_text_encoder_2.json")))
    finally:
        torch.set_default_dtype(previous)
    for m in (unet, vae, clip_l, clip_g):
        _randomize(m, g)
        m.eval()
    return SDComponents(unet=unet, vae=vae, text_encoder=clip_l, tokenizer=None, noise_scheduler=make_scheduler(),
                        family="sdxl", text_encoder_2=clip_g)


def write_sdxl_checkpoint(path: str, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> str:
    """Write the random-weight SDXL-family checkpoint (``sdxl_components``) as an original single file."""
    from safetensors.torch import save_file

    sd = components_to_ldm(sdxl_components(seed, dtype), dtype=dtype)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(sd, path)
    return path


# -- the cached fixture checkpoints shared by every ComfyUI test module -----------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("BAS_TEST_CACHE", os.path.join(REPO, ".cache", "test_models"))
#: name -> write_sd_checkpoint arguments (random weights, SD shapes)
FIXTURES = {"sd15": dict(family="sd1", levels=2), "sd15l3": dict(family="sd1", levels=3),
            "sd20v": dict(family="sd2", levels=4), "sdxl_vega": dict(family="sdxl")}
FIXTURE_VERSION = 1


def cached_checkpoint(name: str) -> str:
    """Path of the cached fixture checkpoint `name`, built on first use (seconds to a minute)."""
    path = os.path.join(CACHE, f"{name}-v{FIXTURE_VERSION}.safetensors")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        tmp = path + ".part.safetensors"
        write_sd_checkpoint(tmp, **FIXTURES[name])
        os.replace(tmp, path)
    return path
