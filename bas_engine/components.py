"""The diffusers/transformers modules of one model, and what is read off them (family, fingerprint, names)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .errors import ModelError
from .fingerprint import model_fingerprint  # noqa: F401  (re-exported: components.model_fingerprint)
from .families import (
    FAMILIES, SD1, SELF_CONTAINED_ADDITIONS, Family, TextEncoderSpec, family_for_unet, get_family, supported_labels,
)


@dataclass
class SDComponents:
    """One Stable-Diffusion-family model as diffusers/transformers modules."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    family: str
    #: the family's second text encoder and its tokenizer (SDXL: OpenCLIP-G with its projection), as
    #: diffusers' SDXL pipeline names them; None for one-encoder families
    text_encoder_2: CLIPTextModel | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def spec(self) -> Family:
        """The family's entry in the family table."""
        return get_family(self.family)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def encoder_name(self) -> str:
        return self.spec.text_encoders[0].name

    def fingerprint(self) -> str:
        return model_fingerprint(self.unet)

    def text_encoders(self) -> list[tuple[TextEncoderSpec, CLIPTokenizer, torch.nn.Module]]:
        """(family entry, tokenizer, module) of each text encoder, in the family's order."""
        modules = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        pairs = list(zip(self.spec.text_encoders, modules))
        missing = [spec.name for spec, (tokenizer, encoder) in pairs if tokenizer is None or encoder is None]
        if missing:
            raise ModelError(f"this {self.spec.label} model lacks its {', '.join(missing)} text encoder or tokenizer")
        return [(spec, tokenizer, encoder) for spec, (tokenizer, encoder) in pairs]

    def modules(self) -> list[torch.nn.Module]:
        """UNet, VAE and every text encoder (for device moves, dtype casts and freezing)."""
        return [self.unet, self.vae, self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 else [])


def canonical_text_encoder_name(name: str) -> str:
    """Parameter/module names of CLIPTextModel as packs store them: without transformers 4's `text_model.`."""
    return name.removeprefix("text_model.")


def text_encoder_part(text_encoder: torch.nn.Module, name: str, parameter: bool = False):
    """The submodule (or parameter) of a CLIPTextModel by canonical name, in transformers 4 or 5 layout."""
    getter = text_encoder.get_parameter if parameter else text_encoder.get_submodule
    try:
        return getter(name)
    except AttributeError:
        return getter("text_model." + name)


def detect_family(unet: UNet2DConditionModel) -> str:
    """Name the model family from the UNet's cross-attention width and extra conditioning.

    Small test models with another width and no extra conditioning are SD1-like (one CLIP text encoder);
    with SDXL's "text_time" conditioning they are SDXL-like (two text encoders, pooled output).
    """
    context = unet.config.cross_attention_dim
    if isinstance(context, (list, tuple)):
        context = context[0]
    extra = getattr(unet.config, "addition_embed_type", None)
    if extra in SELF_CONTAINED_ADDITIONS:  # computed by the UNet from the token states: nothing for us to supply
        extra = None
    family = family_for_unet(int(context), extra)
    if family is not None:
        return family.key
    if extra is None:
        return SD1.key
    # Small test models of a family with extra conditioning (SDXL-shaped, other widths)
    for family in FAMILIES.values():
        if family.addition_embed_type == extra:
            return family.key
    raise ModelError(f"this UNet takes extra conditioning {extra!r} (cross-attention width {context}); "
                     f"Break-A-Scene here supports {supported_labels(diffusers=True)}")
