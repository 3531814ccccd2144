"""Model loading: the diffusers modules the method trains, wherever they come from."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Mapping

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .errors import ModelError

from .families import ENCODER_BY_FAMILY, FAMILY_BY_CONTEXT


@dataclass
class SDComponents:
    """One Stable-Diffusion-family model as diffusers/transformers modules."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    family: str

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def encoder_name(self) -> str:
        return ENCODER_BY_FAMILY[self.family]

    def fingerprint(self) -> str:
        return model_fingerprint(self.unet)


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
    """Name the model family from the UNet's cross-attention width; anything else is a clear error."""
    context = unet.config.cross_attention_dim
    if isinstance(context, (list, tuple)):
        context = context[0]
    if getattr(unet.config, "addition_embed_type", None) == "text_time":
        raise ModelError("this is an SDXL model; Break-A-Scene here supports SD1.x and SD2.x only")
    family = FAMILY_BY_CONTEXT.get(int(context))
    if family is None:
        # Small test models are SD1-like: one CLIP text encoder, epsilon or v.
        family = "sd1"
    return family


def model_fingerprint(unet: torch.nn.Module | Mapping[str, torch.Tensor], samples: int = 4096) -> str:
    """A short hash of the base UNet weights, independent of dtype, device and parameter names.

    Each tensor contributes its shape and a strided sample of its values rounded to fp16; the per-tensor
    digests are sorted before hashing, so the same weights give the same fingerprint whether they sit in
    a diffusers UNet (fp32) or in ComfyUI's LDM-keyed model (often fp16). Only the UNet is hashed: the
    text encoders' layouts differ between formats (OpenCLIP's fused qkv), and a fine-tune changes the UNet.
    """
    state = unet.state_dict() if isinstance(unet, torch.nn.Module) else unet
    digests = []
    for tensor in state.values():
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // samples)
        sample = flat[::stride][:samples].to("cpu", torch.float16)
        digest = hashlib.sha256(str(tuple(tensor.shape)).encode())
        digest.update(sample.numpy().tobytes())
        digests.append(digest.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


def load_model(path: str, tokenizer_dir: str | None = None, prediction_type: str | None = None,
               dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load a diffusers model folder, or an original single-file SD1.x/SD2.x checkpoint, without the hub."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"model {path!r} does not exist")
    if os.path.isfile(path):
        from .ldm import load_single_file

        if tokenizer_dir is None:
            raise ModelError(f"model {path!r} is a single file: name a tokenizer folder (tokenizer_dir / --tokenizer)")
        components = load_single_file(path, tokenizer_dir, prediction_type=prediction_type)
        return _to_dtype(components, dtype)
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise ModelError(f"model {path!r} is neither a diffusers folder (no model_index.json) nor a checkpoint file")
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir or os.path.join(path, "tokenizer"),
                                                  local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelError(f"model {path!r} could not be loaded: {exc}") from exc
    if prediction_type is not None:
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    components = SDComponents(unet, vae, text_encoder, tokenizer, scheduler, detect_family(unet))
    return _to_dtype(components, dtype)


def _to_dtype(components: SDComponents, dtype: torch.dtype) -> SDComponents:
    for module in (components.unet, components.vae, components.text_encoder):
        if module.dtype != dtype:
            module.to(dtype=dtype)
    return components


def save_model(components: SDComponents, path: str) -> None:
    """Write the components as a diffusers folder (used by tests, the toy world and the CLI demo)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=components.noise_scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
