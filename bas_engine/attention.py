"""The attention maps of the method: handle columns of softmax(QK^T) at 1/4 of the latent resolution.

The official code stores the full attention probabilities of every layer, which is what makes it run out of
memory. Here every layer keeps its own fast attention for its output, and only the selected cross-attention
layers additionally compute softmax(QK^T) and keep the columns of the handle tokens, averaged over heads:
(B, pixels, N) per layer instead of (B*heads, pixels, 77).

This module is the part both model adapters share (no diffusers, no ComfyUI): which layers feed the loss
(``select_layers``), the maps of one layer (``handle_column_maps``) and the store the layers write into. The
hooks that call them are the adapters' (``diffusers_attention.py``; ComfyUI's attn2 patches in the node pack).
"""
from __future__ import annotations

import logging
import math
from typing import Hashable, Mapping

import torch

log = logging.getLogger(__name__)

#: The paper's maps come from the layers at 1/4 of the latent resolution (16x16 of 64x64 at 512 px).
ATTENTION_DOWNSCALE = 4


def select_layers(found: Mapping[Hashable, int], downscale: int = ATTENTION_DOWNSCALE) -> dict[Hashable, int]:
    """The layers of ``found`` ({layer: its downscale, 1/N of the latent side}) at ``downscale``.

    When no layer sits at that level (small or truncated models), the nearest level that has one is used (the
    coarser on a tie) and a warning says so.
    """
    if not found:
        raise ValueError("the denoiser has no cross-attention layers in the blocks that feed the attention loss")
    chosen = min(set(found.values()), key=lambda f: (abs(math.log2(f) - math.log2(downscale)), -f))
    if chosen != downscale:
        log.warning("UNet has no cross-attention at 1/%d of the latent resolution; using 1/%d instead",
                    downscale, chosen)
    return {name: f for name, f in found.items() if f == chosen}


def handle_column_maps(query: torch.Tensor, key: torch.Tensor, columns: torch.Tensor, scale: float) -> torch.Tensor:
    """(b, pixels, N): softmax(Q K^T * scale) over all keys, the handle columns kept, averaged over heads.

    query (b, heads, pixels, d), key (b, heads, L, d): the first b examples of the batch; columns (b, N): the token
    position of each handle in each example.
    """
    scores = query @ key.transpose(-1, -2) * scale                                  # (b, h, HW, L)
    probs = scores.float().softmax(-1)
    index = columns[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1)
    return probs.gather(-1, index).mean(1)


class AttentionStore:
    """What the capture hooks write: per layer, head-averaged probabilities of the handle columns."""

    def __init__(self):
        self.columns: torch.Tensor | None = None   # (B, N) token position of each handle, >= 0
        self.maps: dict[Hashable, torch.Tensor] = {}

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

    def record(self, layer: Hashable, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Store one layer's maps from its (B, heads, pixels, d) query and (B, heads, L, d) key.

        Gradient checkpointing runs a layer again during backward: the same ops, so the recomputed tensors match
        the saved ones, but the maps of the first pass (which the loss was built from) are kept.
        """
        captured = self.columns.shape[0]
        maps = handle_column_maps(query[:captured], key[:captured], self.columns.to(query.device), scale)
        self.maps.setdefault(layer, maps)

    def mean_map(self, height: int, width: int) -> torch.Tensor:
        """(B, N, height, width): the captured maps averaged over layers (every layer is at this size)."""
        if not self.maps:
            raise RuntimeError("no attention maps were captured in the last forward pass")
        stacked = torch.stack([m.float() for m in self.maps.values()]).mean(0)   # (B, HW, N)
        return stacked.transpose(1, 2).reshape(stacked.shape[0], -1, height, width)
