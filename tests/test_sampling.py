"""Union sampling: non-empty random subsets, aligned prompts and handle positions, joint flips, reproducibility."""
from __future__ import annotations

import itertools

import torch

from bas_engine.handles import Handles, default_tokens
from bas_engine.latents import CachedPosterior, SceneTensors
from bas_engine.sampling import ConceptSampler

TOKENS = default_tokens(3)


def test_subsets_non_empty_distinct_and_all_reachable():
    sampler = ConceptSampler(TOKENS, seed=0)
    seen = set()
    for _ in range(400):
        draw = sampler.draw()
        assert 1 <= len(draw.concepts) <= 3
        assert len(set(draw.concepts)) == len(draw.concepts)
        assert all(0 <= i < 3 for i in draw.concepts)
        seen.add(frozenset(draw.concepts))
    every = {frozenset(c) for k in (1, 2, 3) for c in itertools.combinations(range(3), k)}
    assert seen == every


def test_prompts_follow_the_chosen_concepts():
    sampler = ConceptSampler(TOKENS, seed=1)
    for _ in range(50):
        draw = sampler.draw()
        assert draw.prompt == "a photo of " + " and ".join(TOKENS[i] for i in draw.concepts)
    assert sampler.prompt_for([1, 0]) == "a photo of <asset1> and <asset0>"


def test_handle_positions_match_the_chosen_concepts(tiny):
    handles = Handles(tiny.tokenizer, tiny.text_encoder, TOKENS, [None] * 3)
    sampler = ConceptSampler(TOKENS, seed=2)
    draws = sampler.draw_batch(40)
    ids = handles.tokenizer([d.prompt for d in draws], padding="max_length", max_length=77,
                            return_tensors="pt").input_ids
    positions = handles.positions(ids)
    for draw, row in zip(draws, positions):
        present = [n for n in range(3) if row[n] >= 0]
        assert sorted(present) == sorted(draw.concepts)
        # in prompt order: the first drawn concept's handle comes first
        assert sorted(draw.concepts, key=lambda n: row[n].item()) == draw.concepts


def test_without_union_sampling_all_concepts_every_step():
    sampler = ConceptSampler(TOKENS, seed=0, union_sampling=False)
    for draw in sampler.draw_batch(20):
        assert draw.concepts == [0, 1, 2]
        assert draw.prompt == "a photo of <asset0> and <asset1> and <asset2>"


def test_flip_both_ways_and_off():
    flips = [d.flip for d in ConceptSampler(TOKENS, seed=0).draw_batch(100)]
    assert 20 < sum(flips) < 80
    assert not any(d.flip for d in ConceptSampler(TOKENS, seed=0, flip=False).draw_batch(100))


def test_seeded_reproducibility():
    a = ConceptSampler(TOKENS, seed=5).draw_batch(30)
    b = ConceptSampler(TOKENS, seed=5).draw_batch(30)
    c = ConceptSampler(TOKENS, seed=6).draw_batch(30)
    assert a == b
    assert a != c


def test_batch_draws_independent_subsets():
    sampler = ConceptSampler(TOKENS, seed=3)
    batches = [sampler.draw_batch(2) for _ in range(100)]
    assert sum(x.concepts != y.concepts for x, y in batches) > 30
    assert sum(x.flip != y.flip for x, y in batches) > 20


def test_flips_are_joint(tiny, scene3):
    """SceneTensors.batch flips latents and masks exactly when the draw flips."""
    vae = tiny.vae
    tensors = SceneTensors(scene3, lambda pixels: CachedPosterior.encode(vae, pixels), 64, 8, 2, 4, torch.device("cpu"))
    assert tensors.latent_size == (32, 32) and tensors.attention_size == (8, 8)
    # the masks are not mirror-symmetric, so a flip is visible
    assert not torch.equal(tensors.latent_masks, tensors.latent_masks.flip(-1))
    sampler = ConceptSampler(TOKENS, seed=0)
    draws = sampler.draw_batch(12)
    assert {d.flip for d in draws} == {True, False}
    chosen = torch.zeros(len(draws), 3, dtype=torch.bool)
    for row, draw in enumerate(draws):
        chosen[row, draw.concepts] = True
    generator = torch.Generator().manual_seed(0)
    latents, unions, attention = tensors.batch([d.flip for d in draws], chosen, generator)
    assert latents.shape == (12, 4, 32, 32) and unions.shape == (12, 1, 32, 32) and attention.shape == (12, 3, 8, 8)

    replay = torch.Generator().manual_seed(0)
    for row, draw in enumerate(draws):
        flip = (lambda t: t.flip(-1)) if draw.flip else (lambda t: t)
        expected_union = flip(tensors.latent_masks)[draw.concepts].amax(0)
        assert torch.equal(unions[row, 0], expected_union)
        assert torch.equal(attention[row], flip(tensors.attention_masks))
        posterior = tensors.posteriors[int(draw.flip)]
        noise = torch.randn(posterior.mean.shape, generator=replay)
        assert torch.equal(latents[row:row + 1], posterior.mean + posterior.std * noise)
    # the flipped posterior is the encoding of the flipped image
    with torch.no_grad():
        flipped = vae.encode(tensors.image.flip(-1)[None] * 2 - 1).latent_dist.mean
    torch.testing.assert_close(tensors.posteriors[1].mean, flipped, rtol=1e-4, atol=1e-4)
