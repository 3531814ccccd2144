"""Scene tensors on the training device: cached VAE posteriors and masks at the two resolutions.

The image never changes during training, so it is encoded once (and once flipped, because the VAE is
not flip-equivariant). Sampling from the cached mean and std is exactly `latent_dist.sample()`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from .scene import Scene, resize_masks


class CachedPosterior:
    """A DiagonalGaussian posterior kept as (mean, std); `sample` matches diffusers' sampling."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    @classmethod
    @torch.no_grad()
    def encode(cls, vae, pixels: torch.Tensor) -> "CachedPosterior":
        """A diffusers ``AutoencoderKL``'s posterior of (B, 3, H, W) pixels in [-1, 1] on the VAE's device."""
        dist = vae.encode(pixels.to(vae.dtype)).latent_dist
        return cls(dist.mean.float(), dist.std.float())

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * noise


def training_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(H, W) with about resolution² pixels, the image's aspect ratio, each side a multiple of `multiple`."""
    scale = resolution / math.sqrt(height * width)
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


class SceneTensors:
    """The scene at training size: posteriors (plain, flipped) and masks at latent and attention size."""

    def __init__(self, scene: Scene, encode: Callable[[torch.Tensor], CachedPosterior], resolution: int,
                 latent_multiple: int, vae_scale: int, attention_downscale: int, device: torch.device):
        """``encode``: (B, 3, H, W) pixels in [-1, 1] -> their VAE posterior (the model adapter's)."""
        height, width = training_size(*scene.image.shape[-2:], resolution, latent_multiple)
        self.size = (height, width)
        image = F.interpolate(scene.image[None], size=(height, width), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1).to(device)
        pixels = image * 2 - 1
        # one image at a time: the VAE encoder's full-resolution activations are the run's largest tensors
        self.posteriors = (encode(pixels), encode(pixels.flip(-1)))
        self.latent_size = (height // vae_scale, width // vae_scale)
        self.attention_size = (self.latent_size[0] // attention_downscale, self.latent_size[1] // attention_downscale)
        masks = scene.masks.to(device)
        self.latent_masks = resize_masks(masks, self.latent_size)          # (N, h, w)
        self.attention_masks = resize_masks(masks, self.attention_size)    # (N, h', w')
        self.image = image[0]

    def batch(self, flips: list[bool], chosen: torch.Tensor, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents (B, C, h, w), union masks of the chosen concepts (B, 1, h, w), attention masks (B, N, h', w')."""
        latents, unions, attention = [], [], []
        for flip, chosen_row in zip(flips, chosen):
            posterior = self.posteriors[int(flip)]
            noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device)
            latents.append(posterior.sample(noise))
            latent_masks = self.latent_masks.flip(-1) if flip else self.latent_masks
            attention_masks = self.attention_masks.flip(-1) if flip else self.attention_masks
            # Multiplying by the 0/1 choice (rather than boolean indexing) keeps the step free of host syncs.
            weights = chosen_row.to(latent_masks.device, latent_masks.dtype)[:, None, None]
            unions.append((latent_masks * weights).amax(0, keepdim=True))
            attention.append(attention_masks)
        return torch.cat(latents), torch.stack(unions), torch.stack(attention)
