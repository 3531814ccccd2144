"""Attention capture: equals a naive full-probability reference in value and gradient (also with gradient
checkpointing), leaves the UNet output unchanged, and picks the layers at 1/4 of the latent resolution."""
from __future__ import annotations

import logging

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from bas_engine.diffusers_attention import AttentionCapture, cross_attention_layers
from bas_engine.handles import Handles, default_tokens
from bas_engine.losses import attention_loss

PROMPTS = ["a photo of <asset1> and <asset0>", "a photo of <asset2>"]
TINY_LAYERS = {
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor",
}
WEIGHTS = ("down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight",   # in a captured layer
           "down_blocks.1.resnets.0.conv1.weight")                                 # upstream of them


class ReferenceProcessor:
    """Classic attention that stores every layer's full softmax probabilities (B*heads, HW, L)."""

    def __init__(self, kept: dict, name: str):
        self.kept, self.name = kept, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **k):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, None)
        self.kept[self.name] = probs
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def reference_maps(kept: dict, heads: dict, columns: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Head average of each layer's probabilities, handle columns picked, then the mean over the layers."""
    per_layer = []
    for name, probs in kept.items():
        batch = probs.shape[0] // heads[name]
        mean = probs.view(batch, heads[name], *probs.shape[1:]).mean(1)          # (B, HW, L)
        per_layer.append(torch.stack([mean[b][:, columns[b]] for b in range(batch)]))   # (B, HW, N)
    maps = torch.stack(per_layer).mean(0)
    return maps.transpose(1, 2).reshape(maps.shape[0], -1, *size)


def _setup(components):
    unet, encoder = components.unet, components.text_encoder
    handles = Handles(components.tokenizer, encoder, default_tokens(3), ["bear", None, "bowl"])
    handles.attach()
    unet.requires_grad_(False)
    encoder.requires_grad_(False)
    for name in WEIGHTS:
        unet.get_parameter(name).requires_grad_(True)
    handles.vectors.requires_grad_(True)
    ids = handles.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=generator)
    timesteps = torch.tensor([10, 500])
    masks = torch.rand(2, 3, 8, 8, generator=generator)
    masks = masks / masks.amax(dim=(-2, -1), keepdim=True)
    chosen = handles.positions(ids) >= 0
    return handles, ids, latents, timesteps, masks, chosen


def _grads(components, handles):
    grads = [handles.vectors.grad.clone()] + [components.unet.get_parameter(n).grad.clone() for n in WEIGHTS]
    handles.vectors.grad = None
    for name in WEIGHTS:
        components.unet.get_parameter(name).grad = None
    return grads


def _run_reference(components, handles, ids, latents, timesteps, masks, chosen):
    unet = components.unet
    original = dict(unet.attn_processors)
    kept = {}
    heads = {name: unet.get_submodule(name[:-len(".processor")]).heads for name in TINY_LAYERS}
    unet.set_attn_processor({name: ReferenceProcessor(kept, name) if name in TINY_LAYERS else AttnProcessor2_0()
                             for name in original})
    try:
        context = components.text_encoder(ids)[0]
        output = unet(latents, timesteps, context).sample
        maps = reference_maps(kept, heads, handles.positions(ids).clamp(min=0), (8, 8))
        attention_loss(maps, masks, chosen).backward()
    finally:
        unet.set_attn_processor(original)
    return maps.detach(), output.detach(), _grads(components, handles)


def _run_capture(components, handles, ids, latents, timesteps, masks, chosen):
    unet = components.unet
    capture = AttentionCapture(unet)
    capture.install()
    calls = {name: 0 for name in capture.layers}
    hooks = [unet.get_submodule(name[:-len(".processor")]).register_forward_pre_hook(
        lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)) for name in capture.layers]
    writes = []

    class CountingDict(dict):
        """Records every time a layer's entry is stored or replaced."""

        def __setitem__(self, key, value):
            writes.append(key)
            super().__setitem__(key, value)

        def setdefault(self, key, value=None):
            if key not in self:
                writes.append(key)
            return super().setdefault(key, value)

    try:
        capture.store.start(handles.positions(ids))
        capture.store.maps = CountingDict()
        context = components.text_encoder(ids)[0]
        output = unet(latents, timesteps, context).sample
        maps = capture.store.mean_map(8, 8)
        captured = dict(capture.store.maps)
        attention_loss(maps, masks, chosen).backward()
        # after backward (recomputation included) the store still holds the tensors the loss was built from
        assert set(capture.store.maps) == set(capture.layers)
        assert all(capture.store.maps[name] is captured[name] for name in captured)
    finally:
        for hook in hooks:
            hook.remove()
        capture.remove()
    return maps.detach(), output.detach(), _grads(components, handles), calls, writes


def test_layer_selection_tiny_model(components):
    layers = cross_attention_layers(components.unet)
    assert set(layers) == TINY_LAYERS
    assert set(layers.values()) == {4}


def test_layer_selection_sd_layout():
    """SD1.x/2.x layout (4 levels, no attention in the last down / first up block): 1/4 is down 2 and up 1."""
    unet = UNet2DConditionModel(
        sample_size=32, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1,
        cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    layers = cross_attention_layers(unet)
    assert {name.split(".attentions")[0] for name in layers} == {"down_blocks.2", "up_blocks.1"}
    assert len(layers) == 1 + 2 and set(layers.values()) == {4}
    assert {n.split(".attentions")[0] for n in cross_attention_layers(unet, 2)} == {"down_blocks.1", "up_blocks.2"}


def test_layer_selection_falls_back_to_nearest_level(caplog):
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1, cross_attention_dim=8,
        attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    with caplog.at_level(logging.WARNING, logger="bas_engine.attention"):
        layers = cross_attention_layers(unet)
    assert set(layers.values()) == {2}
    assert {n.split(".attentions")[0] for n in layers} == {"down_blocks.1", "up_blocks.0"}
    assert "using 1/2 instead" in caplog.text


@pytest.mark.parametrize("pixels,side", [(64, 8), (128, 16)])
def test_maps_scale_with_resolution(components, pixels, side):
    unet = components.unet
    latent = pixels // 2                                  # the tiny VAE downsamples by 2
    capture = AttentionCapture(unet)
    capture.install()
    seen = {}
    hooks = [unet.get_submodule(name[:-len(".processor")]).register_forward_pre_hook(
        lambda _m, args, name=name: seen.__setitem__(name, args[0].shape[1])) for name in capture.layers]
    try:
        capture.store.start(torch.tensor([[5, 6]]))
        with torch.no_grad():
            unet(torch.randn(1, 4, latent, latent), torch.tensor([3]), torch.randn(1, 77, 32))
        assert set(seen) == set(capture.layers) and set(seen.values()) == {side * side}
        assert {m.shape for m in capture.store.maps.values()} == {(1, side * side, 2)}
        assert capture.store.mean_map(side, side).shape == (1, 2, side, side)
    finally:
        for hook in hooks:
            hook.remove()
        capture.remove()


def test_unet_output_unchanged_by_capture(components):
    unet = components.unet
    generator = torch.Generator().manual_seed(1)
    latents, context = torch.randn(2, 4, 32, 32, generator=generator), torch.randn(2, 77, 32, generator=generator)
    timesteps = torch.tensor([1, 900])
    original = dict(unet.attn_processors)
    with torch.no_grad():
        plain = unet(latents, timesteps, context).sample
        capture = AttentionCapture(unet)
        capture.install()
        capture.store.start(torch.tensor([[4, 6, 2]]))          # captures the first example only
        captured = unet(latents, timesteps, context).sample
        assert len(capture.store.maps) == len(capture.layers)
        capture.remove()
        after = unet(latents, timesteps, context).sample
    assert torch.equal(plain, captured)
    assert torch.equal(plain, after)
    assert all(unet.attn_processors[name] is processor for name, processor in original.items())
    assert capture.store.columns is None and capture.store.maps == {}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_capture_matches_reference_in_value_and_gradient(components, checkpointing):
    handles, ids, latents, timesteps, masks, chosen = _setup(components)
    assert chosen.tolist() == [[True, True, False], [False, False, True]]
    ref_maps, ref_output, ref_grads = _run_reference(components, handles, ids, latents, timesteps, masks, chosen)
    if checkpointing:
        components.unet.enable_gradient_checkpointing()
        components.unet.train()
    maps, output, grads, calls, writes = _run_capture(components, handles, ids, latents, timesteps, masks, chosen)

    assert maps.shape == (2, 3, 8, 8)
    torch.testing.assert_close(maps, ref_maps, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(output, ref_output, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # maps captured once per layer; with checkpointing each captured layer really ran twice (recomputation)
    assert sorted(writes) == sorted(TINY_LAYERS)
    assert set(calls.values()) == ({2} if checkpointing else {1})
