"""The base model's fingerprint: which weights a pack was trained on, whatever format holds them."""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch


def model_fingerprint(unet: torch.nn.Module | Mapping[str, torch.Tensor], samples: int = 4096) -> str:
    """A short hash of the base denoiser's weights, independent of dtype, device and parameter names.

    Each tensor contributes its shape and a strided sample of its values rounded to fp16; the per-tensor
    digests are sorted before hashing, so the same weights give the same fingerprint whether they sit in
    a diffusers UNet (fp32) or in ComfyUI's LDM-keyed model (often fp16). Only the denoiser is hashed: the
    text encoders' layouts differ between formats (OpenCLIP's fused qkv), and a fine-tune changes the denoiser.
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
