"""Attention capture on a diffusers UNet: processors that run SDPA and record the handle columns.

The maps and the layer choice are the method's (``attention.py``); this module only finds a diffusers UNet's
cross-attention layers and puts the recording processors on the chosen ones.
"""
from __future__ import annotations

import re

import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from .attention import ATTENTION_DOWNSCALE, AttentionStore, select_layers


def cross_attention_layers(unet: UNet2DConditionModel, downscale: int = ATTENTION_DOWNSCALE,
                           blocks: tuple[str, ...] = ("down", "up")) -> dict[str, int]:
    """Processor names of the cross-attention layers at `downscale` in the given UNet blocks ("down", "up",
    "mid": the family table says which), with their downscale (``attention.select_layers``).

    A mid block without attention (diffusers' ``UNetMidBlock2D``, or none) has no processor to find.
    """
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    found: dict[str, int] = {}
    for name in unet.attn_processors:
        if ".attn2." not in name:
            continue
        match = re.match(r"(down|up)_blocks\.(\d+)\.|(mid)_block\.", name)
        kind = match and (match.group(1) or match.group(3))
        if kind not in blocks:
            continue
        if kind == "mid":
            level = n_down - 1
        else:
            index = int(match.group(2))
            level = index if kind == "down" else n_up - 1 - index
        found[name] = 2 ** min(level, n_down - 1)
    if not found:
        raise ValueError(f"the UNet has no cross-attention layers in its {' or '.join(blocks)} blocks")
    return select_layers(found, downscale)


class CaptureAttnProcessor(AttnProcessor2_0):
    """Scaled-dot-product attention that also records the handle columns of softmax(QK^T / sqrt(d))."""

    def __init__(self, store: AttentionStore, name: str):
        super().__init__()
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if self.store.columns is None or encoder_hidden_states is None or attention_mask is not None \
                or attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch, _, _ = hidden_states.shape
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        self.store.record(self.name, query, key, attn.scale)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class AttentionCapture:
    """Installs capture processors on the selected layers of a UNet (and SDPA everywhere else)."""

    def __init__(self, unet: UNet2DConditionModel, downscale: int = ATTENTION_DOWNSCALE,
                 blocks: tuple[str, ...] = ("down", "up")):
        self.unet = unet
        self.layers = cross_attention_layers(unet, downscale, blocks)
        self.downscale = next(iter(self.layers.values()))
        self.store = AttentionStore()
        self._original = None

    def install(self) -> None:
        self._original = dict(self.unet.attn_processors)
        self.unet.set_attn_processor({
            name: CaptureAttnProcessor(self.store, name) if name in self.layers else AttnProcessor2_0()
            for name in self._original})

    def remove(self) -> None:
        if self._original is not None:
            self.unet.set_attn_processor(self._original)
            self._original = None
        self.store.stop()
