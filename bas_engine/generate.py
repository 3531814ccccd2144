"""Generation with a concept pack on a diffusers Stable Diffusion pipeline."""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from .components import SDComponents, detect_family, model_fingerprint, text_encoder_part
from .errors import PackError
from .families import get_family
from .lora import lora_deltas
from .pack import ConceptPack, check_compatible


def build_pipeline(components: SDComponents) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline on the components (shares their modules) with a DDIM sampler."""
    scheduler = DDIMScheduler.from_config(components.noise_scheduler.config)
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def apply_pack(pipe: StableDiffusionPipeline, pack: ConceptPack, scale: float = 1.0,
               strict: bool = False) -> list[str]:
    """Add the pack's handles to the pipeline's tokenizer/text encoder and merge its weights in place.

    LoRA is merged as W += scale * (alpha/r) * up @ down; full-mode deltas as W += scale * delta.
    Returns compatibility warnings (other base weights of the same family).
    """
    family = detect_family(pipe.unet)
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    encoder_name = get_family(family).text_encoders[0].name
    warnings = check_compatible(pack, family, model_fingerprint(pipe.unet), strict,
                                encoder_widths={encoder_name: encoder.get_input_embeddings().embedding_dim})
    vectors = pack.handles[encoder_name]
    if any(t in tokenizer.get_vocab() for t in pack.tokens):
        raise PackError(f"the pipeline already has tokens {pack.tokens}; apply a pack once per pipeline")
    tokenizer.add_tokens(pack.tokens)
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set below
    ids = tokenizer.convert_tokens_to_ids(pack.tokens)
    weight = encoder.get_input_embeddings().weight
    weight[ids] = vectors.to(weight.device, weight.dtype)
    for path, delta in lora_deltas(pack.lora, "unet").items():
        _add(pipe.unet.get_submodule(path).weight, delta, scale)
    for path, delta in lora_deltas(pack.lora, "text_encoder").items():
        _add(text_encoder_part(encoder, path).weight, delta, scale)
    for key, delta in pack.deltas.items():
        model, _, name = key.partition(".")
        target = (pipe.unet.get_parameter(name) if model == "unet"
                  else text_encoder_part(encoder, name, parameter=True))
        _add(target, delta, scale)
    return warnings


def _add(target: torch.Tensor, delta: torch.Tensor, scale: float) -> None:
    target += scale * delta.to(target.device, target.dtype)


def generate(pipe: StableDiffusionPipeline, prompt: str, *, num_images: int = 1, steps: int = 30,
             guidance_scale: float = 7.5, seed: int = 0, height: int | None = None, width: int | None = None,
             negative_prompt: str | None = None):
    """PIL images for `prompt` (handles written as their tokens, e.g. "<asset0> on a beach")."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_images_per_prompt=num_images, num_inference_steps=steps,
                guidance_scale=guidance_scale, generator=generator, height=height, width=width,
                negative_prompt=negative_prompt).images
