"""Will a training run fit? A rough estimate of the memory a run needs, checked before anything is allocated, so
that a size that cannot fit is a clear error that says what would fit (not an allocator traceback), and so that
gradient checkpointing is turned on only where the run would not fit without it.

The estimate is deliberately simple: the weights that still have to move to the device, plus the activations kept
for the backward pass, which grow with the latent pixels times the denoiser's widths. Both model adapters use it:
the diffusers one against the device's free memory, ComfyUI's as the ``memory_required`` it gives ComfyUI's model
management (which then offloads other models to make room).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .errors import InputError

#: activations kept per latent pixel per UNet channel per block, in elements: measured order of magnitude for
#: diffusers' UNet2DConditionModel (resnets, norms, attention in/out) without and with gradient checkpointing
ACTIVATIONS_PER_CHANNEL_PIXEL = {False: 48, True: 12}
#: what is kept free for the allocator's fragmentation and the CUDA context
HEADROOM = 1.15


def activation_bytes(widths: Sequence[int], blocks: int, latent_pixels: int, batch: int, checkpointing: bool,
                     bytes_per_element: int) -> int:
    """Activations of one training step: per UNet level, its width times its pixels (each level halves the
    side), for the down and the up path. ``widths``: channels per level; ``blocks``: ResNets per level."""
    per_pixel = sum(width * (blocks + 1) / 4 ** level for level, width in enumerate(widths)) * 2
    return int(per_pixel * latent_pixels * batch * ACTIVATIONS_PER_CHANNEL_PIXEL[checkpointing] * bytes_per_element)


#: activations a DiT block keeps per token per hidden channel for the backward pass, in elements: counted from
#: Flux's blocks (norm, modulation, qkv, q/k norms and rotations, attention output, projection, residual, the MLP's
#: 4x wide input and activation: ~23 per stream of a double block, ~24 for a single block's fused linears)
DIT_ACTIVATIONS_PER_TOKEN_CHANNEL = {"double": 23, "single": 24}


def dit_activation_bytes(hidden: int, double_blocks: int, single_blocks: int, image_tokens: int, text_tokens: int,
                         batch: int, checkpointing: bool, bytes_per_element: int) -> int:
    """Activations of one training step of a Flux-like transformer (double-stream then single-stream blocks over
    text + image tokens; attention through SDPA keeps no probabilities). With checkpointing each block keeps only
    its input and one block at a time is recomputed."""
    tokens = image_tokens + text_tokens
    per_block = {kind: count * tokens * hidden for kind, count in DIT_ACTIVATIONS_PER_TOKEN_CHANNEL.items()}
    if checkpointing:
        elements = (double_blocks + single_blocks) * tokens * hidden + max(per_block.values())
    else:
        elements = double_blocks * per_block["double"] + single_blocks * per_block["single"]
    return int(elements * batch * bytes_per_element)


def weight_bytes(modules: list[torch.nn.Module], device: torch.device) -> int:
    """Bytes of the parameters and buffers that are not on `device` yet."""
    total = 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device != device:
                total += tensor.numel() * tensor.element_size()
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory of the device: CUDA's free memory, the system's available memory for the CPU; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def plan_checkpointing(needed: Callable[[int, int, bool], int], image_size: tuple[int, int], setting: str,
                       device: torch.device, free_bytes: int | None = None) -> bool:
    """Whether to train with gradient checkpointing, and an InputError (field "resolution") when the run cannot fit.

    ``needed(height, width, checkpointing)``: the estimated bytes of a run at that image size. ``setting``: "on",
    "off" or "auto" (checkpointing only when the run would not fit without it; ``TrainConfig.gradient_checkpointing``). ``free_bytes`` defaults to what the
    device reports (``available_bytes``). A size that does not fit is refused on CUDA only, where the free memory is
    the hard limit; on the CPU the estimate only decides "auto" (the system may swap or overcommit). The message
    gives the largest square resolution that would fit.
    """
    if free_bytes is None:
        free_bytes = available_bytes(device)
    if setting != "auto":
        checkpointing = setting == "on"
    else:
        checkpointing = free_bytes is not None and needed(*image_size, False) > free_bytes
    if free_bytes is None or device.type != "cuda":
        return checkpointing
    need = needed(*image_size, checkpointing)
    if need <= free_bytes:
        return checkpointing
    could = setting != "off"        # "auto" already tried checkpointing
    fitting = [side for side in range(64, max(image_size) + 1, 64) if needed(side, side, could) <= free_bytes]
    advice = (f"resolution {fitting[-1]} would fit" if fitting else
              "not even resolution 64 fits: free memory or use a smaller model")
    hint = "; gradient checkpointing (on or auto) would lower the need" if setting == "off" else ""
    raise InputError(f"resolution: training at {image_size[1]}x{image_size[0]} needs about {need / 2**30:.1f} GiB "
                     f"on {device}, but {free_bytes / 2**30:.1f} GiB are free; {advice}{hint}", field="resolution")
