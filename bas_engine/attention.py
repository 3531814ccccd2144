"""Attention capture: handle-column cross-attention maps from the UNet layers at 1/4 latent resolution.

The official code stores the full attention probabilities of every layer, which is what makes it run
out of memory. Here every layer keeps scaled-dot-product attention for its output, and only the
selected cross-attention layers additionally compute softmax(QK^T) and keep the columns of the
handle tokens, averaged over heads: (B, pixels, N) per layer instead of (B*heads, pixels, 77).
"""
from __future__ import annotations

import logging
import math
import re

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

log = logging.getLogger(__name__)

#: The paper's maps come from the layers at 1/4 of the latent resolution (16x16 of 64x64 at 512 px).
ATTENTION_DOWNSCALE = 4


def cross_attention_layers(unet: UNet2DConditionModel, downscale: int = ATTENTION_DOWNSCALE,
                           blocks: tuple[str, ...] = ("down", "up")) -> dict[str, int]:
    """Processor names of the cross-attention layers at `downscale` in the given UNet blocks ("down", "up",
    "mid": the family table says which), with their downscale.

    When the UNet has no cross-attention at that level (small or truncated models), the nearest level
    that has one is used and a warning says so.
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
    chosen = min(set(found.values()), key=lambda f: (abs(math.log2(f) - math.log2(downscale)), -f))
    if chosen != downscale:
        log.warning("UNet has no cross-attention at 1/%d of the latent resolution; using 1/%d instead",
                    downscale, chosen)
    return {name: f for name, f in found.items() if f == chosen}


class AttentionStore:
    """What the capture processors write: per layer, head-averaged probabilities of the handle columns."""

    def __init__(self):
        self.columns: torch.Tensor | None = None   # (B, N) token position of each handle, >= 0
        self.maps: dict[str, torch.Tensor] = {}

    def start(self, columns: torch.Tensor) -> None:
        """Capture the given columns in the next forward pass (only the first B examples of the batch).

        Call `stop()` only after the backward pass: with gradient checkpointing, backward recomputes the
        captured layers, and they must take the same path as in the forward pass.
        """
        self.columns = columns.clamp(min=0)
        self.maps = {}

    def stop(self) -> None:
        self.columns = None
        self.maps = {}

    def mean_map(self, height: int, width: int) -> torch.Tensor:
        """(B, N, height, width): the captured maps averaged over layers (every layer is at this size)."""
        if not self.maps:
            raise RuntimeError("no attention maps were captured in the last forward pass")
        stacked = torch.stack([m.float() for m in self.maps.values()]).mean(0)   # (B, HW, N)
        return stacked.transpose(1, 2).reshape(stacked.shape[0], -1, height, width)


class CaptureAttnProcessor(AttnProcessor2_0):
    """Scaled-dot-product attention that also records the handle columns of softmax(QK^T / sqrt(d))."""

    def __init__(self, store: AttentionStore, name: str):
        super().__init__()
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        columns = self.store.columns
        if columns is None or encoder_hidden_states is None or attention_mask is not None \
                or attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch, _, _ = hidden_states.shape
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)

        # Probabilities only for the captured examples; the softmax runs over all keys, then only the
        # handle columns are kept.
        captured = columns.shape[0]
        scores = query[:captured] @ key[:captured].transpose(-1, -2) * attn.scale        # (b, h, HW, L)
        probs = scores.float().softmax(-1)
        index = columns[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1)
        maps = probs.gather(-1, index).mean(1)                                             # (b, HW, N)
        # Gradient checkpointing runs this again during backward: the same ops, so the recomputed tensors
        # match the saved ones, but the maps of the first pass (which the loss was built from) are kept.
        self.store.maps.setdefault(self.name, maps)

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
