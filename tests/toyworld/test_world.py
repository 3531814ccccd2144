import json

import numpy as np
import pytest

from bas_toyworld.world import (
    BACKGROUNDS, COLOURS, IMAGE_SIZE, NOVEL_CONCEPTS, SHAPES, TEXTURES, DemoScene, SceneSpec, caption, is_novel,
    MAX_CONCEPTS, make_concept_scene, make_demo_scene, make_heldout_scenes, random_spec, render_scene, save_scene_dir, shape_coverage,
)


def test_generator_is_deterministic():
    a = [random_spec(np.random.default_rng(7)) for _ in range(3)]
    b = [random_spec(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    img_a, masks_a = render_scene(a[0])
    img_b, masks_b = render_scene(b[0])
    assert np.array_equal(img_a, img_b) and all(np.array_equal(x, y) for x, y in zip(masks_a, masks_b))
    d1, d2 = make_demo_scene(3), make_demo_scene(3)
    assert d1.spec == d2.spec and np.array_equal(d1.image, d2.image)
    assert all(np.array_equal(x, y) for x, y in zip(d1.loose_masks, d2.loose_masks))
    h1, h2 = make_heldout_scenes(4, seed=1), make_heldout_scenes(4, seed=1)
    assert [s.spec for s in h1] == [s.spec for s in h2]
    assert [s.spec for s in h1] != [s.spec for s in make_heldout_scenes(4, seed=2)]


def test_novel_concepts_never_in_pretraining_specs():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        for o in random_spec(rng).objects:
            assert not is_novel(o.concept), o
            seen.add(o.concept)
    # ...while every single attribute of the novel concepts is common in pretraining data
    for c in NOVEL_CONCEPTS:
        assert any(s.shape == c.shape for s in seen) and any(s.colour == c.colour for s in seen)
        assert any(s.texture == c.texture for s in seen)
    rng = np.random.default_rng(1)
    assert any(is_novel(o.concept) for _ in range(500) for o in random_spec(rng, allow_novel=True).objects)


def test_render_outputs_and_masks():
    rng = np.random.default_rng(5)
    for _ in range(40):
        spec = random_spec(rng, allow_novel=True)
        img, masks = render_scene(spec)
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and img.dtype == np.uint8
        assert len(masks) == len(spec.objects) and 1 <= len(masks) <= 4
        stack = np.stack(masks)
        assert stack.dtype == bool and stack.sum(0).max() <= 1  # visible masks are disjoint
        assert len({o.colour for o in spec.objects}) == len(spec.objects)
        for o, m in zip(spec.objects, masks):
            full = (shape_coverage(o) >= 0.5).sum()
            assert m.sum() >= 0.6 * full  # occlusion is limited
            # the visible pixels really have the object's colour (or its texture ink)
            c = np.array(COLOURS[o.colour], float)
            inner = img[m].astype(float)
            t = inner @ c / (c @ c)
            assert np.median(np.linalg.norm(inner - t[:, None] * c, axis=1)) < 20


def test_caption_grammar():
    rng = np.random.default_rng(0)
    spec = random_spec(rng)
    text = caption(spec)
    assert text == caption(spec)
    for o in spec.objects:
        assert o.colour in text and o.shape in text
    assert text.endswith({"white": "on a white background", "gray": "on a gray background", "beach": "on the beach",
                          "night": "at night", "grass": "on the grass", "tiles": "on a tiled floor"}[spec.background])


def test_vocabulary_sizes():
    assert len(SHAPES) >= 6 and len(COLOURS) == 8 and len(TEXTURES) == 4 and len(BACKGROUNDS) >= 4
    assert len(set(NOVEL_CONCEPTS)) == len(NOVEL_CONCEPTS)


def test_demo_scene(tmp_path):
    for seed in range(5):
        d = make_demo_scene(seed)
        assert isinstance(d, DemoScene) and len(d.spec.objects) == 3 and len(d.loose_masks) == 3
        assert all(is_novel(o.concept) for o in d.spec.objects)
        assert d.concepts == [o.concept for o in d.spec.objects]
        for i, (exact, loose) in enumerate(zip(d.masks, d.loose_masks)):
            assert exact.sum() > 100
            assert (exact & loose).sum() / exact.sum() > 0.95  # loose masks cover their object...
            assert loose.sum() > 1.3 * exact.sum()  # ...sloppily
            for j, other in enumerate(d.masks):
                if j != i:
                    assert not (loose & other).any()  # ...without painting over the others
    p = save_scene_dir(make_demo_scene(0), tmp_path / "demo")
    assert {f.name for f in p.iterdir()} == {"img.png", "mask0.png", "mask1.png", "mask2.png", "spec.json"}
    meta = json.loads((p / "spec.json").read_text())
    assert SceneSpec.from_json(meta["spec"]) == make_demo_scene(0).spec


def test_concept_scenes_for_the_concept_sweep():
    from bas_toyworld import judge

    assert MAX_CONCEPTS == 8
    for n in range(1, MAX_CONCEPTS + 1):
        for seed in (1, 2):
            d = make_concept_scene(seed, n)
            assert len(d.concepts) == len(d.spec.objects) == len(d.loose_masks) == n
            assert len({c.colour for c in d.concepts}) == n  # the judge tells a scene's concepts apart by colour
            assert all(o.size == "small" for o in d.spec.objects)  # one size for every count
            # novel while there are novel concepts left (6), pretraining combinations in the spare colours beyond
            assert sum(is_novel(c) for c in d.concepts) == min(n, len(NOVEL_CONCEPTS))
            det = judge.detect(d.image)
            assert all(judge.identity(det, c) == 1.0 for c in d.concepts)  # each drawn whole, none hidden
            for i, (exact, loose) in enumerate(zip(d.masks, d.loose_masks)):
                assert exact.sum() > 50 and (exact & loose).sum() / exact.sum() > 0.95
                assert not any((loose & other).any() for j, other in enumerate(d.masks) if j != i)
    again = make_concept_scene(2, 8)
    assert again.spec == make_concept_scene(2, 8).spec and again.spec != make_concept_scene(3, 8).spec
    for bad in (0, MAX_CONCEPTS + 1):
        with pytest.raises(ValueError, match="n_concepts must be 1..8"):
            make_concept_scene(1, bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_heldout_scenes(seed):
    scenes = make_heldout_scenes(5, seed)
    assert len(scenes) == 5
    for s in scenes:
        assert s.image.shape == (64, 64, 3) and len(s.masks) == len(s.spec.objects)
        assert not any(is_novel(o.concept) for o in s.spec.objects)
