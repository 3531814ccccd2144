"""Generation with a concept pack on a diffusers Stable Diffusion (SD1.x / SD2.x) or SDXL pipeline."""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from .components import SDComponents, detect_family, model_fingerprint, text_encoder_part
from .errors import PackError
from .families import get_family
from .lora import lora_deltas
from .conditioning import pool_at_end_of_text
from .pack import ConceptPack, check_compatible


def build_pipeline(components: SDComponents) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A StableDiffusionPipeline (SDXL: StableDiffusionXLPipeline) on the components (shares their modules) with
    a DDIM sampler."""
    scheduler = DDIMScheduler.from_config(components.noise_scheduler.config)
    if components.text_encoder_2 is not None:
        pool_at_end_of_text(components.text_encoder_2, components.tokenizer_2)
        pipe = StableDiffusionXLPipeline(
            vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
            tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
            scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe
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
    # (pack name, tokenizer, encoder) of each text encoder: "text_encoder", "text_encoder_2" as diffusers names them
    encoders = [(attr, getattr(pipe, attr.replace("text_encoder", "tokenizer")), getattr(pipe, attr))
                for attr in ("text_encoder", "text_encoder_2")[:len(get_family(family).text_encoders)]]
    specs = get_family(family).text_encoders
    warnings = check_compatible(pack, family, model_fingerprint(pipe.unet), strict, encoder_widths={
        spec.name: encoder.get_input_embeddings().embedding_dim for spec, (_, _, encoder) in zip(specs, encoders)})
    if any(t in tokenizer.get_vocab() for _, tokenizer, _ in encoders for t in pack.tokens):
        raise PackError(f"the pipeline already has tokens {pack.tokens}; apply a pack once per pipeline")
    for spec, (attr, tokenizer, encoder) in zip(specs, encoders):
        tokenizer.add_tokens(pack.tokens)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are set below
        ids = tokenizer.convert_tokens_to_ids(pack.tokens)
        weight = encoder.get_input_embeddings().weight
        weight[ids] = pack.handles[spec.name].to(weight.device, weight.dtype)
        for path, delta in lora_deltas(pack.lora, attr).items():
            _add(text_encoder_part(encoder, path).weight, delta, scale)
    for path, delta in lora_deltas(pack.lora, "unet").items():
        _add(pipe.unet.get_submodule(path).weight, delta, scale)
    text_encoders = {attr: encoder for attr, _, encoder in encoders}
    for key, delta in pack.deltas.items():
        model, _, name = key.partition(".")
        target = (pipe.unet.get_parameter(name) if model == "unet"
                  else text_encoder_part(text_encoders[model], name, parameter=True))
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
