"""The parts of ComfyUI's Flux transformer (``comfy.ldm.flux.model.Flux``) the adapter needs.

* **Attention maps.** Flux has no cross-attention: each double-stream block runs one joint attention over the
  text tokens followed by the image tokens (``DoubleStreamBlock.forward``: ``cat((txt_q, img_q))``). A ``dit``
  replace patch on every double block marks the block's ``transformer_options`` for the call; the run's
  ``optimized_attention_override`` then sees that block's rotated queries and keys (B, heads, L, d), records the
  image queries' softmax over **all** keys (text and image, as the block computes it) at the handle columns, and
  computes the output with torch's SDPA. The maps sit on the transformer's patch grid (1/2 of the latent side).
* **In-place adds.** The blocks add their residuals into tensors a layer norm saved for the backward pass
  (``txt += ...`` after ``txt_norm1(txt)``, single blocks ``x += ...`` after ``pre_norm(x)``): each layer norm of
  a block gets a pre-hook that hands it a copy, and each block a copy of the residual stream it adds into.
* **Phase 2.** LoRA on the attention projections and MLPs of both streams and the single blocks' two linears
  (``LORA_TARGETS``; the names are ComfyUI's / BFL's module paths). A full fine-tune is refused (family table).
"""
from __future__ import annotations

import logging
import re

import torch

from ...bas_engine.attention import AttentionStore
from ...bas_engine.memory import dit_activation_bytes
from ...bas_engine.model_adapter import AttentionHooks

log = logging.getLogger("break_a_scene")

#: the projections phase 2's LoRA adapts: both streams' qkv / proj and MLP linears, the single blocks' linears
LORA_TARGETS = re.compile(r"^(double_blocks\.\d+\.(img|txt)_(attn\.(qkv|proj)|mlp\.[02])"
                          r"|single_blocks\.\d+\.linear[12])$")
#: the key of the mark a double block's patch puts into its transformer_options: (layer, text tokens)
CAPTURE_KEY = "break_a_scene_capture"
#: T5 tokens ComfyUI's Flux tokenizer pads every prompt to (``T5XXLTokenizer(min_length=256)``)
TEXT_TOKENS = 256


class CaptureOrSDPA:
    """``optimized_attention_override``: torch's SDPA for every attention of the transformer; in a marked double
    block, also the handle columns of the image queries' attention."""

    def __init__(self, store: AttentionStore):
        self.store = store

    def __call__(self, function, q, k, v, heads, *args, **kwargs):
        from comfy.ldm.modules.attention import attention_pytorch

        mark = (kwargs.get("transformer_options") or {}).get(CAPTURE_KEY)
        if mark is not None and self.store.columns is not None:
            layer, text_tokens = mark
            # skip_reshape: (B, heads, L, d) with the text tokens first
            self.store.record(layer, q[:, :, text_tokens:], k, q.shape[-1] ** -0.5)
        return attention_pytorch(q, k, v, heads, *args, **kwargs)


class DoubleBlockMark:
    """A ``dit`` double_block replace patch: runs the block as it is, its transformer_options marked."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, args: dict, extra: dict) -> dict:
        options = dict(args.get("transformer_options") or {})
        options[CAPTURE_KEY] = (self.layer, args["txt"].shape[1])
        return extra["original_block"]({**args, "transformer_options": options})


class FluxAttentionHooks(AttentionHooks):
    """The marks on every double block of a MODEL clone and the capturing attention (in its model_options)."""

    def __init__(self, patcher, blocks: tuple[str, ...]):
        if tuple(blocks) != ("double",):
            raise ValueError(f"Flux's attention maps come from its double blocks; the family table asks for {blocks}")
        self.patcher = patcher
        model = patcher.model.diffusion_model
        self.layers = [("double", i) for i in range(len(model.double_blocks))]
        if not self.layers:
            raise ValueError("the Flux transformer has no double-stream blocks to read attention maps from")
        self.downscale = model.patch_size
        self.store = AttentionStore()

    def install(self) -> None:
        options = self.patcher.model_options.setdefault("transformer_options", {})
        options["optimized_attention_override"] = CaptureOrSDPA(self.store)
        replaced = options.get("patches_replace", {}).get("dit", {})
        for kind, number in self.layers:
            if ("double_block", number) in replaced:
                log.warning("Break-A-Scene Trainer: Flux double block %d is replaced by another node's patch; "
                            "training runs the block itself", number)
            self.patcher.set_model_patch_replace(DoubleBlockMark((kind, number)), "dit", "double_block", number)

    def remove(self) -> None:
        """The patches live in the clone's own model_options; the store is emptied."""
        self.store.stop()


def _copy_residual_inputs(module, args, kwargs):
    """Forward pre-hook of a block: its residual stream inputs as copies (the block adds into them in place)."""
    if "txt" in kwargs:                                            # DoubleStreamBlock(img=..., txt=..., ...)
        kwargs = {**kwargs, "txt": kwargs["txt"].clone()}
    if args and torch.is_tensor(args[0]):                          # SingleStreamBlock(x, vec=..., ...)
        args = (args[0].clone(),) + tuple(args[1:])
    return args, kwargs


def _copy_norm_input(module, args):
    """Forward pre-hook of a layer norm: it normalises (and saves) a copy of what the block adds into afterwards."""
    return (args[0].clone(),) + tuple(args[1:])


class FluxParts:
    """ComfyUI's Flux transformer of a MODEL clone."""

    lora_targets = LORA_TARGETS

    def __init__(self, patcher):
        self.patcher = patcher
        self.diffusion_model = patcher.model.diffusion_model
        #: a latent side must be whole patches (the loss mask is pooled to them)
        self.latent_multiple = self.patch_size = self.diffusion_model.patch_size

    def activation_bytes(self, latent_size: tuple[int, int], batch: int, checkpointing: bool, element: int) -> int:
        model = self.diffusion_model
        patch = model.patch_size
        image_tokens = (latent_size[0] // patch) * (latent_size[1] // patch)
        return dit_activation_bytes(model.hidden_size, len(model.double_blocks), len(model.single_blocks),
                                    image_tokens, TEXT_TOKENS, batch, checkpointing, element)

    def attention_hooks(self, downscale: int, blocks: tuple[str, ...]) -> FluxAttentionHooks:
        """The maps sit on the patch grid whatever the configured downscale (Flux has one resolution)."""
        return FluxAttentionHooks(self.patcher, blocks)

    def trainable_layers(self) -> dict[str, tuple[str, torch.nn.Module]]:
        """{module path (ComfyUI's): (ComfyUI key prefix, layer)} of every layer of the transformer."""
        return {path: (f"diffusion_model.{path}", module)
                for path, module in self.diffusion_model.named_modules() if hasattr(module, "weight_function") and path}

    def blocks(self) -> list[torch.nn.Module]:
        return list(self.diffusion_model.double_blocks) + list(self.diffusion_model.single_blocks)

    def checkpoint_modules(self) -> list[torch.nn.Module]:
        return self.blocks()

    def guard_in_place(self) -> list:
        hooks = [block.register_forward_pre_hook(_copy_residual_inputs, with_kwargs=True) for block in self.blocks()]
        hooks += [norm.register_forward_pre_hook(_copy_norm_input) for block in self.blocks()
                  for norm in block.modules() if isinstance(norm, torch.nn.LayerNorm)]
        return hooks

    def extra_inputs(self, batch: int, config, device: torch.device) -> dict:
        """Flux dev's distilled guidance, as ComfyUI's FluxGuidance sets it (schnell has no guidance input)."""
        if not self.diffusion_model.params.guidance_embed:
            return {}
        return {"guidance": torch.full((batch,), float(config.guidance), device=device)}
