"""Model loading: the diffusers modules the method trains, wherever they come from."""
from __future__ import annotations

import json
import os

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .components import SDComponents, detect_family
from .errors import ModelError
from .ldm import load_single_file


def load_model(path: str, tokenizer_dir: str | None = None, prediction_type: str | None = None,
               dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load a diffusers model folder, or an original single-file SD1.x/SD2.x checkpoint, without the hub."""
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
