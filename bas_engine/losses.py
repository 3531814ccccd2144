"""The two losses of Break-A-Scene: masked diffusion loss and cross-attention loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_diffusion_loss(prediction: torch.Tensor, target: torch.Tensor,
                          mask: torch.Tensor | None) -> torch.Tensor:
    """Noise-prediction MSE counted only inside `mask` (B, 1, h, w) at latent resolution.

    As in the paper's code, both sides are multiplied by the mask and the mean runs over all
    elements, so pixels outside the chosen concepts contribute exactly zero.
    """
    prediction, target = prediction.float(), target.float()
    if mask is not None:
        prediction, target = prediction * mask, target * mask
    return F.mse_loss(prediction, target, reduction="mean")


def pool_to_patches(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """A (B, 1, h, w) latent mask averaged over each patch x patch block and spread back over it: what a
    transformer that reads the latent in patches sees of the mask (Flux: 2x2). ``patch`` 1 leaves it as it is."""
    if patch == 1:
        return mask
    pooled = F.avg_pool2d(mask.float(), patch, ceil_mode=True)
    return pooled.repeat_interleave(patch, -2).repeat_interleave(patch, -1)[..., :mask.shape[-2], :mask.shape[-1]]


def attention_loss(maps: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Cross-attention loss: each chosen handle's map, divided by its max, against its own mask.

    maps: (B, N, h, w) captured attention of every handle column; masks: (B, N, h, w) concept masks
    at the same resolution; chosen: (B, N) bool, which handles were in each example's prompt.
    The loss is the mean over chosen (example, handle) pairs of the per-pair MSE.
    """
    maps, masks = maps.float(), masks.float()
    normalized = maps / maps.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    per_pair = (normalized - masks).pow(2).mean(dim=(-2, -1))          # (B, N)
    weights = chosen.float()
    return (per_pair * weights).sum() / weights.sum().clamp_min(1.0)
