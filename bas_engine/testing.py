"""Code for tests and benchmarks only: small random-weight models built from configs, a synthetic scene, and
writers of diffusers folders and original single-file checkpoints (the fixtures ComfyUI loads).

Nothing here downloads anything: the tokenizer is a byte-level CLIP BPE vocabulary written in code.
"""
from __future__ import annotations

import json
import os
import re
import tempfile

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .components import SDComponents, detect_family
from .errors import ModelError
from .ldm import UNET_PREFIX, VAE_PREFIX, diffusers_to_ldm_unet_keys
from .unet_config import _count

#: words that get a single token, so prompts used in tests and demos tokenize compactly
COMMON_WORDS = ("a photo of and an oil painting next to on the beach object bowl stone figurine bear "
                "plush panda shell bird statue red blue green").split()


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_tokenizer(folder: str, words: tuple[str, ...] = tuple(COMMON_WORDS), vocab_size: int | None = None) -> str:
    """Write a CLIP tokenizer folder: all bytes (plain and word-final), some whole words, special tokens.

    ``vocab_size`` pads the vocabulary with unused entries up to CLIP's size (49408), so embedding tables
    have their real shape (benchmarks); the special tokens stay the last two ids, as in CLIP.
    """
    os.makedirs(folder, exist_ok=True)
    chars = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for word in sorted(set(words)):
        # Merge left to right: w+o -> wo, wo+r -> wor, wor+d</w> -> word</w>.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merges.append(f"{current} {piece}")
            current += piece
            vocab.setdefault(current, len(vocab))
    merges = list(dict.fromkeys(merges))
    while vocab_size and len(vocab) < vocab_size - 2:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "pad_token": "<|endoftext|>",
                   "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>"}, f)
    return folder


def tiny_tokenizer(vocab_size: int | None = None) -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder, vocab_size=vocab_size))


def tiny_components(seed: int = 0, prediction_type: str = "epsilon", cross_attention_dim: int = 32,
                    text_layers: int = 2) -> SDComponents:
    """A three-level UNet with cross-attention at 1/2 and 1/4 of the latent size, a x2 VAE, a tiny CLIP.

    At 64 px: latents 32x32, attention maps 8x8 — the same proportions as SD at 512 px.
    """
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=64)
    text_encoder = _text_encoder(tokenizer, hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
                                 num_hidden_layers=text_layers, num_attention_heads=4)
    return _assemble(unet, vae, text_encoder, tokenizer, prediction_type)


def sd15_shaped_components(seed: int = 0, prediction_type: str = "epsilon") -> SDComponents:
    """Random weights with SD1.5's UNet, VAE and CLIP-L shapes (about 1 GB in fp32), for benchmarks."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text_encoder = _text_encoder(tokenizer, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, hidden_act="quick_gelu")
    return _assemble(unet, vae, text_encoder, tokenizer, prediction_type)


def tiny_sdxl_components(seed: int = 0, prediction_type: str = "epsilon",
                         mid_block_type: str | None = "UNetMidBlock2DCrossAttn") -> SDComponents:
    """SDXL-shaped, tiny: two text encoders of different widths (CLIP-L-like 32 wide, OpenCLIP-G-like 48 wide
    with a projection) whose penultimate states make an 80-wide context, the pooled projection and the six
    time ids in the UNet's added embedding ("text_time"), and SDXL's level layout: no attention at full
    latent size, cross-attention at 1/2 and 1/4, the deepest level and the mid block with two transformer
    layers (SDXL: 10). At 64 px: latents 32x32, attention maps 8x8.

    The G encoder's config keeps SDXL's legacy ``eos_token_id=2``, with which transformers pools at the
    highest token id (a handle, once handles are added): the engine must not rely on it. ``mid_block_type``:
    diffusers' (with cross-attention; ``UNetMidBlock2D``: one ResNet, as distilled SDXL variants have; None).
    """
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer()
    tokenizer_2.pad_token = "!"                     # OpenCLIP pads with "!" (id 0), CLIP-L with end-of-text
    time_dim, pooled_dim = 8, 48
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), cross_attention_dim=32 + 48, attention_head_dim=8,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim, mid_block_type=mid_block_type)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=64, scaling_factor=0.13025)   # the LDM VAE's 32 groups
    text_encoder = _text_encoder(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, hidden_act="quick_gelu")
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer_2), max_position_embeddings=77, hidden_size=48, intermediate_size=96,
        num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu", projection_dim=pooled_dim,
        bos_token_id=0, eos_token_id=2, pad_token_id=1))
    components = _assemble(unet, vae, text_encoder, tokenizer, prediction_type)
    text_encoder_2.eval()
    components.text_encoder_2, components.tokenizer_2 = text_encoder_2, tokenizer_2
    return components


def sdxl_shaped_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> SDComponents:
    """Random weights with SDXL 1.0 base's shapes: UNet (2.6 B parameters), VAE, CLIP-L and OpenCLIP-G with its
    projection; built directly in ``dtype`` (bf16: about 7 GB instead of 14 GB in fp32). For benchmarks."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        tokenizer = tiny_tokenizer(vocab_size=49408)
        tokenizer_2 = tiny_tokenizer(vocab_size=49408)
        tokenizer_2.pad_token = "!"
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=1024, scaling_factor=0.13025)
        text_encoder = _text_encoder(tokenizer, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, hidden_act="quick_gelu")
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer_2), max_position_embeddings=77, hidden_size=1280, intermediate_size=5120,
            num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu", projection_dim=1280,
            bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id, pad_token_id=0))
    finally:
        torch.set_default_dtype(previous)
    components = _assemble(unet, vae, text_encoder, tokenizer, "epsilon")
    text_encoder_2.eval()
    components.text_encoder_2, components.tokenizer_2 = text_encoder_2, tokenizer_2
    return components


def _text_encoder(tokenizer: CLIPTokenizer, **shape) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape))


def _assemble(unet, vae, text_encoder, tokenizer, prediction_type: str) -> SDComponents:
    """SD's training scheduler (scaled-linear betas) and eval-mode modules around the given parts."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type=prediction_type, clip_sample=False)
    for module in (unet, vae, text_encoder):
        module.eval()
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, detect_family(unet))


def synthetic_scene(size: int = 128, concepts: int = 3, seed: int = 0):
    """A smooth random picture with `concepts` soft elliptical masks, made in code (no files)."""
    from .scene import load_scene

    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(size, size),
                                            mode="bicubic", align_corners=False)[0].clamp(0, 1)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    masks = []
    for i in range(concepts):
        cx, cy = (i + 0.5) / concepts, 0.35 + 0.3 * ((i % 2) == 1)
        distance = ((xs - cx) / (0.45 / concepts)) ** 2 + ((ys - cy) / 0.22) ** 2
        masks.append((1.5 - distance).clamp(0, 1))
    return load_scene(image, masks)


def save_model(components: SDComponents, path: str) -> None:
    """Write the components as a diffusers folder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if components.text_encoder_2 is not None:
        StableDiffusionXLPipeline(
            vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
            tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
            scheduler=components.noise_scheduler).save_pretrained(path, safe_serialization=True)
        return
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=components.noise_scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)


# -- original single-file checkpoints (the reverse of bas_engine.ldm) -----------------------------------------

_VAE_ATTN_D2L = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm_vae_keys(vae: AutoencoderKL) -> dict[str, str]:
    """diffusers AutoencoderKL parameter name -> LDM VAE name (without ``first_stage_model.``)."""
    n_up = len(vae.config.up_block_types)
    top = {v_d: v_l for v_d, v_l in sfu.DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    out = {}
    for name in vae.state_dict():
        if name in top:
            out[name] = top[name]
            continue
        m = re.match(r"^(encoder|decoder)\.(down_blocks|up_blocks|mid_block)\.(.*)$", name)
        if not m:
            raise ModelError(f"no LDM name for VAE parameter {name!r}")
        coder, block, rest = m.groups()
        if block == "mid_block":
            m2 = re.match(r"^resnets\.(\d+)\.(.*)$", rest)
            if m2:
                out[name] = f"{coder}.mid.block_{int(m2.group(1)) + 1}.{m2.group(2).replace('conv_shortcut', 'nin_shortcut')}"
                continue
            m2 = re.match(r"^attentions\.0\.(.*)\.(weight|bias)$", rest)
            out[name] = f"{coder}.mid.attn_1.{_VAE_ATTN_D2L[m2.group(1)]}.{m2.group(2)}"
            continue
        m2 = re.match(r"^(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)$", rest)
        i, kind, j, tail = int(m2.group(1)), m2.group(2), int(m2.group(3)), m2.group(4)
        if block == "down_blocks":
            lvl, word = i, "down"
        else:
            lvl, word = n_up - 1 - i, "up"
        if kind == "resnets":
            out[name] = f"{coder}.{word}.{lvl}.block.{j}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
        elif kind == "downsamplers":
            out[name] = f"{coder}.down.{lvl}.downsample.{tail}"
        else:
            out[name] = f"{coder}.up.{lvl}.upsample.{tail}"
    return out




def components_to_ldm(components: SDComponents, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Write the components as an original single-file state dict, the text encoder in its family's layout.

    An OpenCLIP tower whose last resblock diffusers drops (SD2, penultimate-layer convention) gets it back as
    an all-zero block, which is an identity in a pre-LN residual transformer, and an identity
    ``text_projection``; ComfyUI and the LDM code never use either for conditioning.
    """
    def cast(t):
        t = t.detach().contiguous()
        return t.to(dtype) if dtype is not None else t.clone()

    out: dict[str, torch.Tensor] = {}
    usd = components.unet.state_dict()
    for d, l in diffusers_to_ldm_unet_keys(components.unet).items():
        out[UNET_PREFIX + l] = cast(usd[d])
    vsd = components.vae.state_dict()
    for d, l in diffusers_to_ldm_vae_keys(components.vae).items():
        t = vsd[d]
        if ".mid.attn_1." in l and l.endswith("weight") and t.ndim == 2:
            t = t[:, :, None, None]                                       # LDM uses 1x1 convs
        out[VAE_PREFIX + l] = cast(t)
    for encoder, module in zip(components.spec.text_encoders, (components.text_encoder, components.text_encoder_2)):
        out.update(_text_encoder_to_ldm(module, encoder, cast))
    return out


def _text_encoder_to_ldm(module: torch.nn.Module, encoder, cast) -> dict[str, torch.Tensor]:
    """One text encoder's weights under its checkpoint prefix, in its layout (HF names or OpenCLIP's)."""
    out: dict[str, torch.Tensor] = {}
    tsd = {k.removeprefix("text_model."): v for k, v in module.state_dict().items()
           if not k.endswith("position_ids")}
    p = encoder.checkpoint_prefix
    if encoder.checkpoint_layout == "hf":
        for name, value in tsd.items():
            if name != "text_projection.weight":
                out[p + "text_model." + name] = cast(value)
        return out
    out[p + "token_embedding.weight"] = cast(tsd["embeddings.token_embedding.weight"])
    out[p + "positional_embedding"] = cast(tsd["embeddings.position_embedding.weight"])
    out[p + "ln_final.weight"] = cast(tsd["final_layer_norm.weight"])
    out[p + "ln_final.bias"] = cast(tsd["final_layer_norm.bias"])
    n = _count(list(tsd), "encoder.layers.{}.")
    for i in range(n + int(encoder.drop_last_layer)):
        src, dst = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        if i < n:
            get = lambda name: tsd[src + name]                            # noqa: E731
        else:
            get = lambda name: torch.zeros_like(tsd[f"encoder.layers.0.{name}"])  # noqa: E731
        for w in ("weight", "bias"):
            out[dst + f"attn.in_proj_{w}"] = cast(torch.cat([get(f"self_attn.{q}_proj.{w}") for q in "qkv"]))
            out[dst + f"attn.out_proj.{w}"] = cast(get(f"self_attn.out_proj.{w}"))
            out[dst + f"ln_1.{w}"] = cast(get(f"layer_norm1.{w}"))
            out[dst + f"ln_2.{w}"] = cast(get(f"layer_norm2.{w}"))
            out[dst + f"mlp.c_fc.{w}"] = cast(get(f"mlp.fc1.{w}"))
            out[dst + f"mlp.c_proj.{w}"] = cast(get(f"mlp.fc2.{w}"))
    width = tsd["embeddings.token_embedding.weight"].shape[1]
    if "text_projection.weight" in tsd:                  # OpenCLIP multiplies by the (width, proj) matrix
        out[p + "text_projection"] = cast(tsd["text_projection.weight"].t())
    else:
        out[p + "text_projection"] = cast(torch.eye(width, dtype=tsd["final_layer_norm.weight"].dtype))
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write a tiny random-weight diffusers model folder")
    parser.add_argument("out")
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    args = parser.parse_args()
    save_model(tiny_components(prediction_type=args.prediction_type), args.out)
    print(args.out)
