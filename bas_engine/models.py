"""Model loading: the diffusers modules the method trains, wherever they come from."""
from __future__ import annotations

import json
import os

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .components import SDComponents, detect_family
from .errors import ModelError
from .ldm import load_single_file


def load_model(path: str, tokenizer_dir: str | None = None, prediction_type: str | None = None,
               dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load a diffusers model folder (SD1.x, SD2.x, SDXL), or an original single-file checkpoint, without the hub.

    A single file needs a tokenizer folder (CLIP's vocab.json + merges.txt); SDXL's two encoders share it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"model {path!r} does not exist")
    if os.path.isfile(path):
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
        text_encoder_2 = tokenizer_2 = None
        if os.path.isdir(os.path.join(path, "text_encoder_2")):          # SDXL: OpenCLIP-G with its projection
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2",
                                                                         local_files_only=True)
            tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_dir or os.path.join(path, "tokenizer_2"),
                                                        local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelError(f"model {path!r} could not be loaded: {exc}") from exc
    if prediction_type is not None:
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    components = SDComponents(unet, vae, text_encoder, tokenizer, scheduler, detect_family(unet),
                              text_encoder_2, tokenizer_2)
    if len(components.spec.text_encoders) == 2 and text_encoder_2 is None:
        raise ModelError(f"model {path!r} has an {components.spec.label} UNet but no text_encoder_2 folder")
    if tokenizer_dir and tokenizer_2 is not None:
        # one shared vocabulary folder: the second encoder pads as it was trained (OpenCLIP: "!")
        from .ldm import load_tokenizer

        tokenizer_2 = components.tokenizer_2 = load_tokenizer(tokenizer_dir, components.spec.text_encoders[1])
    return _to_dtype(components, dtype)


def _to_dtype(components: SDComponents, dtype: torch.dtype) -> SDComponents:
    for module in components.modules():
        if module.dtype != dtype:
            module.to(dtype=dtype)
    return components
