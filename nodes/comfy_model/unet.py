"""The parts of ComfyUI's UNet (SD1.x, SD2.x, SDXL) the adapter needs: its levels, its cross-attention layers, the
layers phase 2 trains, its blocks for checkpointing and its memory estimate. ``flux.py`` has the same for Flux."""
from __future__ import annotations

import torch

from ...bas_engine.lora import UNET_TARGETS
from ...bas_engine.memory import activation_bytes
from .attention import ComfyAttentionHooks
from .weights import TrainableWeights


class UNetParts:
    """ComfyUI's ``openaimodel.UNetModel`` of a MODEL clone."""

    #: the layers phase 2's LoRA adapts (pack names: diffusers module paths)
    lora_targets = UNET_TARGETS
    #: the UNet reads every latent pixel on its own
    patch_size = 1

    def __init__(self, patcher):
        self.patcher = patcher
        self.diffusion_model = patcher.model.diffusion_model
        #: a latent side must pass every downsampling
        self.latent_multiple = 2 ** (len(self.diffusion_model.channel_mult) - 1)

    def activation_bytes(self, latent_size: tuple[int, int], batch: int, checkpointing: bool, element: int) -> int:
        """Estimated activations of one training step at this latent size (``memory.activation_bytes``)."""
        model = self.diffusion_model
        widths = [model.model_channels * m for m in model.channel_mult]
        return activation_bytes(widths, max(model.num_res_blocks), latent_size[0] * latent_size[1], batch,
                                checkpointing, element)

    def attention_hooks(self, downscale: int, blocks: tuple[str, ...]) -> ComfyAttentionHooks:
        return ComfyAttentionHooks(self.patcher, downscale, blocks)

    def trainable_layers(self) -> dict[str, tuple[str, torch.nn.Module]]:
        return TrainableWeights.unet_layers(self.patcher)

    def checkpoint_modules(self) -> list[torch.nn.Module]:
        """Every highest layer of the UNet that is not a container (as ComfyUI's own trainer checkpoints)."""
        found = []

        def visit(module: torch.nn.Module) -> None:
            for child in module.children():
                if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)):
                    visit(child)
                else:
                    found.append(child)

        visit(self.diffusion_model)
        return found

    def guard_in_place(self) -> list:
        """Hooks that keep autograd whole where blocks add into their inputs in place: none needed in the UNet."""
        return []

    def extra_inputs(self, batch: int, config, device: torch.device) -> dict:
        """Inputs of ``apply_model`` beside the latents, sigma and text (SDXL's ``y`` comes from the pooled text)."""
        return {}
