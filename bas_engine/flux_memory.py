"""What training Break-A-Scene on Flux.1 needs, on paper: the parts of a run's GPU memory and whether it fits.

Flux trains only in ComfyUI, in place (``nodes/comfy_model``): ComfyUI keeps the transformer and the text encoders
in their dtype, the handles train through T5 and CLIP-L every step (both stay loaded), and phase 2 adds LoRA
adapters with fp32 weights, gradients and Adam's two moments. Parameter counts are computed from the architecture
(the shapes of ``comfy.ldm.flux.model.Flux``: hidden 3072, 19 double and 38 single blocks for dev / schnell);
activations from ``memory.dit_activation_bytes``. Printed by ``scripts/flux_memory.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory import dit_activation_bytes

GIB = 2 ** 30


@dataclass(frozen=True)
class FluxShape:
    """The sizes of a Flux transformer (``FluxParams``) and its text encoders."""

    hidden: int = 3072
    double_blocks: int = 19
    single_blocks: int = 38
    mlp_ratio: int = 4
    context: int = 4096                     # T5-XXL width
    pooled: int = 768                       # CLIP-L width
    in_channels: int = 64                   # 16 latent channels x 2x2 patch
    t5_parameters: int = 4_762_310_656      # T5-XXL encoder (ComfyUI's t5_config_xxl.json), embeddings included
    clip_l_parameters: int = 123_060_480    # CLIP-L text model
    vae_parameters: int = 83_819_683        # the Flux VAE (encoder and decoder)

    def transformer_parameters(self) -> int:
        h, m = self.hidden, self.mlp_ratio
        head = h // 24
        double = 2 * ((6 * h * h + 6 * h) + (3 * h * h + 3 * h) + (h * h + h) + (m * h * h + m * h) + (m * h * h + h)
                      + 2 * head)
        single = (h * (3 + m) * h + (3 + m) * h) + ((1 + m) * h * h + h) + (3 * h * h + 3 * h) + 2 * head
        embedders = ((self.in_channels * h + h) + (256 * h + h + h * h + h)            # img_in, time_in
                     + (self.pooled * h + h + h * h + h) + (self.context * h + h))     # vector_in, txt_in
        final = (2 * h * h + 2 * h) + (h * self.in_channels + self.in_channels)
        guidance = 256 * h + h + h * h + h
        return self.double_blocks * double + self.single_blocks * single + embedders + final + guidance

    def _target_blocks(self) -> tuple[int, int]:
        """Weights of the linears phase 2 adapts in one (double, single) block."""
        h, m = self.hidden, self.mlp_ratio
        double = 2 * (3 * h * h + h * h + m * h * h + m * h * h)       # both streams' qkv, proj, mlp.0, mlp.2
        single = (3 + m) * h * h + (1 + m) * h * h                     # linear1, linear2
        return double, single

    def target_parameters(self, checkpointing: bool) -> int:
        """Weights of the adapted linears that phase 2 holds a patched copy of at once: all of them, or with
        gradient checkpointing the largest block's (each block's copies are recomputed in its backward)."""
        double, single = self._target_blocks()
        if checkpointing:
            return max(double if self.double_blocks else 0, single if self.single_blocks else 0)
        return self.double_blocks * double + self.single_blocks * single

    def largest_target(self) -> int:
        """Weights of the largest adapted linear (a single block's linear1, else a double block's mlp.0)."""
        return (3 + self.mlp_ratio if self.single_blocks else self.mlp_ratio) * self.hidden * self.hidden

    def lora_parameters(self, rank: int) -> int:
        """LoRA on both streams' qkv, proj and MLP linears and the single blocks' two linears."""
        h, m = self.hidden, self.mlp_ratio
        double = 2 * (rank * (h + 3 * h) + rank * (h + h) + rank * (h + m * h) + rank * (m * h + h))
        single = rank * (h + (3 + m) * h) + rank * ((1 + m) * h + h)
        return self.double_blocks * double + self.single_blocks * single


FLUX_DEV = FluxShape()


def training_memory(shape: FluxShape, resolution: int, rank: int, checkpointing: bool, weight_bytes: float,
                    text_encoder_bytes: float, compute_bytes: int = 2, text_tokens: int = 256, batch: int = 1
                    ) -> dict[str, float]:
    """The parts of one phase-2 run's memory in GiB (phase 1 is the same without the LoRA parts).

    "patched weights": ComfyUI's weight wrappers (how the in-place path trains, as ComfyUI's own trainer does)
    compute each adapted layer with ``W + up @ down`` in the compute dtype, and autograd keeps that tensor for the
    backward pass, so without checkpointing phase 2 holds a second copy of every adapted weight (most of Flux), and
    the layer being computed briefly holds two fp32 tensors of its weight's size."""
    latent = resolution // 8
    image_tokens = (latent // 2) ** 2
    lora = shape.lora_parameters(rank) * 4 * 4                  # fp32 weights, gradients, Adam's m and v
    activations = dit_activation_bytes(shape.hidden, shape.double_blocks, shape.single_blocks, image_tokens,
                                       text_tokens, batch, checkpointing, compute_bytes)
    parts = {
        "transformer": shape.transformer_parameters() * weight_bytes,
        "text encoders": (shape.t5_parameters + shape.clip_l_parameters) * text_encoder_bytes,
        "LoRA + Adam": lora,
        # + the one layer being computed: its fp32 up @ down and W + up @ down before the cast back
        "patched weights": shape.target_parameters(checkpointing) * compute_bytes + 2 * 4 * shape.largest_target(),
        "activations": activations,
    }
    parts = {name: value / GIB for name, value in parts.items()}
    parts["total"] = sum(parts.values())
    return parts
