"""Small random-weight models built from configs, for tests, the tiny benchmark and the smoke demo.

Nothing here downloads anything: the tokenizer is a byte-level CLIP BPE vocabulary written in code.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .models import SDComponents, detect_family

#: words that get a single token, so prompts used in tests and demos tokenize compactly
COMMON_WORDS = ("a photo of and an oil painting next to on the beach object bowl stone figurine bear "
                "plush panda shell bird statue red blue green").split()


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_tokenizer(folder: str, words: tuple[str, ...] = tuple(COMMON_WORDS)) -> str:
    """Write a CLIP tokenizer folder: all bytes (plain and word-final), some whole words, special tokens."""
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


def tiny_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder))


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


if __name__ == "__main__":
    import argparse

    from .models import save_model

    parser = argparse.ArgumentParser(description="write a tiny random-weight diffusers model folder")
    parser.add_argument("out")
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    args = parser.parse_args()
    save_model(tiny_components(prediction_type=args.prediction_type), args.out)
    print(args.out)
