"""Cached VAE posteriors and the training size."""
from __future__ import annotations

import math

import pytest
import torch

from bas_engine.latents import CachedPosterior, training_size


def test_cached_posterior_samples_like_diffusers(tiny):
    vae = tiny.vae
    pixels = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cached = CachedPosterior.encode(vae, pixels)
    for seed in (0, 1, 7):
        mine = torch.Generator().manual_seed(seed)
        theirs = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            expected = vae.encode(pixels).latent_dist.sample(generator=theirs)
        noise = torch.randn(cached.mean.shape, generator=mine)
        assert torch.equal(cached.sample(noise), expected)
        # and both generators are left in the same state
        assert torch.equal(mine.get_state(), theirs.get_state())
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
    assert torch.equal(cached.mean, dist.mean) and torch.equal(cached.std, dist.std)


@pytest.mark.parametrize("height,width,resolution,multiple", [
    (512, 512, 64, 8), (512, 768, 64, 8), (768, 512, 512, 64), (1080, 1920, 512, 64), (333, 500, 128, 16),
    (4000, 100, 64, 8),
])
def test_training_size_keeps_aspect_and_multiples(height, width, resolution, multiple):
    h, w = training_size(height, width, resolution, multiple)
    assert h % multiple == 0 and w % multiple == 0
    assert h >= multiple and w >= multiple
    # each side is the nearest multiple to the exact aspect-preserving size (or the minimum multiple)
    scale = resolution / math.sqrt(height * width)
    for got, side in ((h, height), (w, width)):
        assert abs(got - side * scale) <= multiple / 2 + 1e-6 or got == multiple
    if min(h, w) > multiple:
        assert abs(math.log((h / w) / (height / width))) < math.log(1 + 2 * multiple / min(h, w))
        assert abs(h * w / resolution ** 2 - 1) < 4 * multiple / min(h, w)


def test_training_size_square():
    assert training_size(512, 512, 64, 8) == (64, 64)
    assert training_size(1024, 1024, 512, 64) == (512, 512)
