"""Will a training run fit? A rough estimate of the device memory a run needs, checked before anything is
allocated, so that a size that cannot fit is a clear error that says what would fit, not an allocator traceback.

The estimate is deliberately simple: the weights that still have to move to the device, plus the activations
kept for the backward pass, which grow with the latent pixels times the UNet's widths. It is checked on CUDA,
where free memory is known (``torch.cuda.mem_get_info``); sizes are also bounded by TrainConfig's range.
"""
from __future__ import annotations

import torch

from .errors import InputError

#: activations kept per latent pixel per UNet channel per block, in elements: measured order of magnitude for
#: diffusers' UNet2DConditionModel (resnets, norms, attention in/out) without and with gradient checkpointing
ACTIVATIONS_PER_CHANNEL_PIXEL = {False: 48, True: 12}
#: what is kept free for the allocator's fragmentation and the CUDA context
HEADROOM = 1.15


def activation_bytes(unet: torch.nn.Module, latent_pixels: int, batch: int, checkpointing: bool,
                     bytes_per_element: int) -> int:
    """Activations of one training step: per UNet level, its width times its pixels (each level halves the
    side), for the down and the up path."""
    channels = list(unet.config.block_out_channels)
    blocks = unet.config.layers_per_block if isinstance(unet.config.layers_per_block, int) else max(
        unet.config.layers_per_block)
    per_pixel = sum(width * (blocks + 1) / 4 ** level for level, width in enumerate(channels)) * 2
    return int(per_pixel * latent_pixels * batch * ACTIVATIONS_PER_CHANNEL_PIXEL[checkpointing] * bytes_per_element)


def weight_bytes(modules: list[torch.nn.Module], device: torch.device) -> int:
    """Bytes of the parameters and buffers that are not on `device` yet."""
    total = 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device != device:
                total += tensor.numel() * tensor.element_size()
    return total


def training_bytes(unet: torch.nn.Module, modules: list[torch.nn.Module], latent_size: tuple[int, int],
                   batch: int, checkpointing: bool, bytes_per_element: int, device: torch.device) -> int:
    """Estimated device memory a run needs on top of what the device already holds (`modules`: every module
    of the model, the UNet included)."""
    weights = weight_bytes(modules, device)
    activations = activation_bytes(unet, latent_size[0] * latent_size[1], batch, checkpointing, bytes_per_element)
    return int((weights + activations) * HEADROOM)


def check_fits(unet: torch.nn.Module, modules: list[torch.nn.Module], image_size: tuple[int, int],
               vae_scale: int, batch: int, checkpointing: bool, bytes_per_element: int, device: torch.device,
               free_bytes: int | None = None) -> None:
    """InputError (field "resolution") when the estimate exceeds the free memory of a CUDA device.

    ``free_bytes`` defaults to what CUDA reports; on other devices nothing is checked (without a free-memory
    figure an estimate cannot decide). The message gives the largest square resolution that would fit.
    """
    if free_bytes is None:
        if device.type != "cuda":
            return
        free_bytes, _ = torch.cuda.mem_get_info(device)

    def needed(height: int, width: int) -> int:
        return training_bytes(unet, modules, (height // vae_scale, width // vae_scale), batch, checkpointing,
                              bytes_per_element, device)

    need = needed(*image_size)
    if need <= free_bytes:
        return
    fitting = [side for side in range(64, max(image_size) + 1, 64) if needed(side, side) <= free_bytes]
    advice = (f"resolution {fitting[-1]} would fit" if fitting else
              "not even resolution 64 fits: free memory or use a smaller model")
    hint = "" if checkpointing else "; gradient checkpointing would lower the need"
    raise InputError(f"resolution: training at {image_size[1]}x{image_size[0]} needs about {need / 2**30:.1f} GiB "
                     f"on {device}, but {free_bytes / 2**30:.1f} GiB are free; {advice}{hint}", field="resolution")
