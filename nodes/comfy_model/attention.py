"""Attention while training ComfyUI's own UNet: the loss's maps through attn2 replace patches, and SDPA everywhere.

ComfyUI's transformer blocks hand an ``attn2`` replace patch the projected query, key and value of their
cross-attention (``BasicTransformerBlock.forward``); the patch computes the attention output and, for the layers the
loss reads, also records the handle columns of softmax(QK^T) (``bas_engine.attention``, the same maps as the
diffusers path). Every other attention of the UNet is routed to ComfyUI's ``attention_pytorch`` (torch's
scaled_dot_product_attention) through ``optimized_attention_override``: the attention ComfyUI picks for sampling may
have no backward pass (sage) or keep all its chunks for one (the sub-quadratic and split attention it uses on the
CPU: several GB at 512 px); SDPA's own backward keeps no probabilities, as the diffusers path's processors do. All
of it lives in the clone's ``model_options``, so the MODEL that flowed in never sees it.
"""
from __future__ import annotations

import logging

from ...bas_engine.attention import AttentionStore, select_layers
from ...bas_engine.model_adapter import AttentionHooks

log = logging.getLogger("break_a_scene")

def cross_attention_layers(diffusion_model, blocks: tuple[str, ...]) -> dict[tuple[str, int, int], int]:
    """{(block, number, transformer index): downscale} of every cross-attention layer of ComfyUI's UNet in the given
    blocks ("down", "mid", "up"), the keys ``ModelPatcher.set_model_attn2_replace`` takes."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

    def transformers(block):
        return [layer for layer in block if isinstance(layer, SpatialTransformer)]

    def layers(name: str, number: int, block, level: int) -> dict:
        return {(name, number, t): 2 ** level for transformer in transformers(block)
                for t, layer in enumerate(transformer.transformer_blocks) if layer.attn2 is not None}

    found: dict[tuple[str, int, int], int] = {}
    level = 0
    for number, block in enumerate(diffusion_model.input_blocks):
        if "down" in blocks:
            found.update(layers("input", number, block, level))
        level += sum(isinstance(layer, Downsample) for layer in block)
    deepest = level
    if "mid" in blocks and diffusion_model.middle_block is not None:
        found.update(layers("middle", 0, diffusion_model.middle_block, deepest))
    for number, block in enumerate(diffusion_model.output_blocks):
        if "up" in blocks:
            found.update(layers("output", number, block, level))
        level -= sum(isinstance(layer, Upsample) for layer in block)
    if not found:
        raise ValueError(f"the UNet has no cross-attention layers in its {' or '.join(blocks)} blocks")
    return found


def scaled_dot_product_attention(function, *args, **kwargs):
    """``optimized_attention_override``: whatever attention ComfyUI would use, train with torch's SDPA."""
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


class CapturePatch:
    """An attn2 replace patch: ComfyUI's attention for the output, and the handle columns into the store."""

    def __init__(self, store: AttentionStore, layer):
        self.store, self.layer = store, layer

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import attention_pytorch

        heads = extra_options["n_heads"]
        out = attention_pytorch(q, k, v, heads, attn_precision=extra_options.get("attn_precision"))
        if self.store.columns is not None:
            batch, head_dim = q.shape[0], q.shape[-1] // heads
            query = q.view(batch, -1, heads, head_dim).transpose(1, 2)
            key = k.view(k.shape[0], -1, heads, head_dim).transpose(1, 2)
            self.store.record(self.layer, query, key, head_dim ** -0.5)
        return out


class ComfyAttentionHooks(AttentionHooks):
    """The capture patches on the chosen layers of a MODEL clone (installed into its model_options)."""

    def __init__(self, patcher, downscale: int, blocks: tuple[str, ...]):
        self.patcher = patcher
        self.layers = select_layers(cross_attention_layers(patcher.model.diffusion_model, blocks), downscale)
        self.downscale = next(iter(self.layers.values()))
        self.store = AttentionStore()

    def install(self) -> None:
        options = self.patcher.model_options.setdefault("transformer_options", {})
        options["optimized_attention_override"] = scaled_dot_product_attention
        replaced = options.get("patches_replace", {}).get("attn2", {})
        for block, number, index in self.layers:
            if (block, number, index) in replaced or (block, number) in replaced:
                log.warning("Break-A-Scene Trainer: the MODEL's cross-attention at %s %d (%d) is replaced by another "
                            "node's patch; training uses plain attention there", block, number, index)
            self.patcher.set_model_attn2_replace(CapturePatch(self.store, (block, number, index)), block, number, index)

    def remove(self) -> None:
        """The patches live in the clone's own model_options: dropping the clone drops them; the store is emptied."""
        self.store.stop()
