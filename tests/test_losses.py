"""The masked diffusion loss and the cross-attention loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bas_engine.losses import attention_loss, masked_diffusion_loss, pool_to_patches


def _mask(batch=2, size=8) -> torch.Tensor:
    mask = torch.zeros(batch, 1, size, size)
    mask[0, :, 2:6, 1:4] = 1.0
    mask[0, :, 6, 1:4] = 0.5                    # soft edge
    mask[1, :, :3, :] = 1.0
    return mask


def test_masked_loss_ignores_everything_outside_the_mask():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    mask = _mask()
    outside = (mask == 0).expand_as(target)
    prediction = target.clone()
    prediction[outside] += 10 * torch.randn(int(outside.sum()), generator=generator)
    assert masked_diffusion_loss(prediction, target, mask).item() == 0.0
    assert F.mse_loss(prediction, target).item() > 1          # unmasked, the same pair is far apart
    # inside the mask it counts
    prediction[0, :, 3, 2] += 1.0
    assert masked_diffusion_loss(prediction, target, mask).item() > 0


def test_masked_loss_gradient_zero_outside_the_mask():
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    prediction = torch.randn(2, 4, 8, 8, generator=generator, requires_grad=True)
    mask = _mask()
    masked_diffusion_loss(prediction, target, mask).backward()
    outside = (mask == 0).expand_as(target)
    assert torch.count_nonzero(prediction.grad[outside]) == 0
    assert torch.count_nonzero(prediction.grad[~outside]) == int((~outside).sum())


def test_masked_loss_without_mask_is_plain_mse():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    torch.testing.assert_close(masked_diffusion_loss(a, b, None), F.mse_loss(a, b))
    ones = torch.ones(2, 1, 8, 8)
    torch.testing.assert_close(masked_diffusion_loss(a, b, ones), F.mse_loss(a, b))


def _masks(batch=2, concepts=3, size=8) -> torch.Tensor:
    masks = torch.zeros(batch, concepts, size, size)
    for n in range(concepts):
        masks[:, n, :, n * 2:n * 2 + 3] = 1.0
        masks[:, n, 0, n * 2] = 0.25            # soft value; each mask's max stays 1
    return masks


@pytest.mark.parametrize("scale", [1e-4, 0.37, 1.0, 250.0])
def test_attention_loss_zero_for_scaled_masks(scale):
    masks = _masks()
    chosen = torch.tensor([[True, True, True], [True, False, True]])
    assert attention_loss(masks * scale, masks, chosen).item() == pytest.approx(0.0, abs=1e-12)
    # per-pair scales differ too
    factors = torch.tensor([0.1, 3.0, 7.0])[None, :, None, None]
    assert attention_loss(masks * factors, masks, chosen).item() == pytest.approx(0.0, abs=1e-12)
    # a wrong map is not zero
    assert attention_loss(masks.flip(-1) * scale, masks, chosen).item() > 0.01


def test_attention_loss_averages_only_chosen_pairs():
    generator = torch.Generator().manual_seed(3)
    masks = _masks()
    maps = torch.rand(2, 3, 8, 8, generator=generator)
    chosen = torch.tensor([[True, False, False], [False, True, True]])
    normalized = maps / maps.amax(dim=(-2, -1), keepdim=True)
    per_pair = ((normalized - masks) ** 2).mean(dim=(-2, -1))
    expected = (per_pair[0, 0] + per_pair[1, 1] + per_pair[1, 2]) / 3
    torch.testing.assert_close(attention_loss(maps, masks, chosen), expected)
    # unchosen maps may be anything: neither the value nor the gradient depends on them
    other = maps.clone()
    other[0, 1:] = torch.rand(2, 8, 8, generator=generator)
    other[1, 0] = 0.0
    other.requires_grad_(True)
    loss = attention_loss(other, masks, chosen)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.count_nonzero(other.grad[~chosen]) == 0
    assert torch.count_nonzero(other.grad[chosen]) > 0
    # nothing chosen: zero, not NaN
    assert attention_loss(maps, masks, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_pool_to_patches_is_constant_per_patch_and_keeps_the_mean():
    """Flux reads the latent in 2x2 patches: the loss mask is each patch's mean, spread over the patch."""
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 1:4, 0:5] = 1.0
    pooled = pool_to_patches(mask, 2)
    assert pooled.shape == mask.shape
    blocks = pooled.unfold(-2, 2, 2).unfold(-2, 2, 2)              # (1, 1, 3, 3, 2, 2)
    assert torch.equal(blocks.amax((-1, -2)), blocks.amin((-1, -2)))
    assert pooled.sum() == pytest.approx(mask.sum())
    assert pooled[0, 0, 0, 0] == pytest.approx(0.5) and pooled[0, 0, 0, 4] == pytest.approx(0.25)
    assert pool_to_patches(mask, 1) is mask
