"""Toy world v3 (issue 22), the world registry and the pretraining curriculum: numpy only, a few seconds."""
import json
from pathlib import Path

import numpy as np
import pytest

from bas_toyworld import world as v1
from bas_toyworld import world_v3 as v3
from bas_toyworld.curriculum import parse_curriculum, spec_maker, stage_at
from bas_toyworld.worlds import WORLD_FILE, WORLDS, get_world, model_world, write_model_world

V1_MODEL = Path(__file__).resolve().parents[2] / "bas_toyworld" / "weights" / "toy_sd"


def _words(text: str) -> set[str]:
    return set(text.split())


def test_vocabulary_is_a_subset_of_v1s():
    assert v3.SHAPES == ("circle", "square", "triangle", "cross") and v3.TEXTURES == ("solid", "striped")
    assert v3.BACKGROUNDS == ("white", "gray", "beach", "night")
    assert set(v3.SHAPES) <= set(v1.SHAPES) and set(v3.TEXTURES) <= set(v1.TEXTURES)
    assert set(v3.BACKGROUNDS) <= set(v1.BACKGROUNDS) and v3.SIZE in v1.SIZES
    # identity takes more than colour: every colour comes in every shape and texture
    assert len(v3.ALL_CONCEPTS) == len(v3.SHAPES) * len(v1.COLOURS) * len(v3.TEXTURES)
    for c in v3.NOVEL_CONCEPTS:
        assert c.shape in v3.SHAPES and c.texture in v3.TEXTURES and v3.is_novel(c)
    assert len({c.shape for c in v3.NOVEL_CONCEPTS}) == len({c.colour for c in v3.NOVEL_CONCEPTS}) == 4


def test_scenes_stay_inside_v3_and_held_out_concepts_never_train():
    rng = np.random.default_rng(0)
    seen, counts = set(), []
    for _ in range(1500):
        spec = v3.random_spec(rng)
        counts.append(len(spec.objects))
        assert spec.background in v3.BACKGROUNDS
        assert len({o.colour for o in spec.objects}) == len(spec.objects)  # distinct colours per scene
        for o in spec.objects:
            assert not v3.is_novel(o.concept), o
            assert o.shape in v3.SHAPES and o.texture in v3.TEXTURES and o.size == v3.SIZE
            assert abs(o.scale - 1.0) <= v1.SIZE_JITTER + 1e-9
            seen.add(o.concept)
    assert set(counts) == {1, 2, 3, 4}  # four large objects fit, and are never dropped
    assert np.mean(np.array(counts) == 1) == pytest.approx(0.5, abs=0.05)
    # every attribute of a held-out concept is common in training scenes
    for c in v3.NOVEL_CONCEPTS:
        assert any(s.shape == c.shape and s.texture == c.texture for s in seen)
        assert any(s.colour == c.colour for s in seen)
    rng = np.random.default_rng(1)
    assert any(v3.is_novel(o.concept) for _ in range(300) for o in v3.random_spec(rng, allow_novel=True).objects)


def test_captions_name_every_object_without_a_size_word():
    spec = v1.SceneSpec((v1.ObjectSpec("square", "red", "striped", "large", 20, 20),
                         v1.ObjectSpec("circle", "blue", "solid", "large", 44, 44)), "beach")
    assert v3.caption(spec) == "a red striped square and a blue circle " + v1.BACKGROUND_PHRASES["beach"]
    rng = np.random.default_rng(3)
    for _ in range(300):
        spec = v3.random_spec(rng)
        for text in (v3.caption(spec), v3.caption(spec, rng)):
            words = _words(text)
            assert not words & {"small", "large"}, text
            for o in spec.objects:
                assert o.shape in words and o.colour in words
                if o.texture != "solid":
                    assert o.texture in words
    # paraphrases use only words the toy tokenizer has as single tokens
    from bas_toyworld.tokenizer import vocabulary_words

    vocab = set(vocabulary_words())
    rng = np.random.default_rng(4)
    assert all(_words(v3.caption(v3.random_spec(rng), rng).lower()) <= vocab for _ in range(200))


def test_demo_and_heldout_scenes():
    for seed in range(6):
        demo = v3.make_demo_scene(seed)
        assert demo.spec == v3.make_demo_scene(seed).spec and np.array_equal(demo.image, v3.make_demo_scene(seed).image)
        assert len(demo.concepts) == 3 and all(v3.is_novel(c) for c in demo.concepts)
        assert demo.spec.background in v3.BACKGROUNDS
        assert demo.caption == v3.caption(demo.spec) and "large" not in demo.caption
        image, masks = v1.render_scene(demo.spec)
        assert np.array_equal(image, demo.image)
        for loose, exact in zip(demo.loose_masks, masks):
            assert (loose & exact).sum() >= 0.8 * exact.sum()  # loose masks cover their object
    h = v3.make_heldout_scenes(5, seed=1)
    assert [s.spec for s in h] == [s.spec for s in v3.make_heldout_scenes(5, seed=1)]
    assert all(not v3.is_novel(o.concept) for s in h for o in s.spec.objects)


def test_stages_widen_towards_the_whole_world():
    assert v3.STAGE_NAMES == ("narrow", "textures", "backgrounds", "full") and v3.FULL == v3.stage("full")
    with pytest.raises(ValueError, match="unknown v3 stage 'wide'"):
        v3.stage("wide")
    rng = np.random.default_rng(5)
    for st in v3.STAGES:
        specs = [v3.random_spec(rng, within=st) for _ in range(200)]
        assert {s.background for s in specs} == set(st.backgrounds)
        assert {o.texture for s in specs for o in s.objects} == set(st.textures)
        assert max(len(s.objects) for s in specs) == len(st.count_weights)
    narrow = [v3.random_spec(rng, within=v3.stage("narrow")) for _ in range(100)]
    assert {s.background for s in narrow} == {"white"} and {len(s.objects) for s in narrow} == {1}
    assert {o.shape for s in narrow for o in s.objects} == set(v3.SHAPES)


def test_worlds_registry_and_model_folders(tmp_path):
    assert sorted(WORLDS) == ["v1", "v3"] and get_world("v1").shapes == v1.SHAPES
    with pytest.raises(ValueError, match="unknown toy world 'v2'.*v1.*v3"):
        get_world("v2")
    assert model_world(tmp_path) == "v1"  # folders made before v3 have no toy_world.json
    write_model_world(tmp_path, "v1")
    assert not (tmp_path / WORLD_FILE).exists()
    write_model_world(tmp_path, "v3")
    assert json.loads((tmp_path / WORLD_FILE).read_text()) == {"world": "v3"} and model_world(tmp_path) == "v3"
    with pytest.raises(ValueError):
        write_model_world(tmp_path, "v9")
    for bad in ("not json", "[1, 2]", '{"name": "v3"}'):
        (tmp_path / WORLD_FILE).write_text(bad)
        with pytest.raises(ValueError, match=WORLD_FILE):
            model_world(tmp_path)
    (tmp_path / WORLD_FILE).write_text('{"world": "v7"}')
    with pytest.raises(ValueError, match="unknown toy world 'v7'"):
        model_world(tmp_path)
    # the registry's makers are the worlds' own
    w = get_world("v3")
    assert w.random_spec(np.random.default_rng(2)) == v3.random_spec(np.random.default_rng(2))
    assert get_world("v1").random_spec(np.random.default_rng(2)) == v1.random_spec(np.random.default_rng(2))


def test_curriculum_parsing_errors_are_clear():
    assert parse_curriculum(None) == () and parse_curriculum("") == ()
    assert parse_curriculum("600,1200,2000") == (600, 1200, 2000)
    for bad, message in (("600,x", "expected increasing step numbers"), ("600,600", "positive and increasing"),
                         ("900,600", "positive and increasing"), ("0,5", "positive and increasing"),
                         ("1,2,3,4", "at most 3 steps")):
        with pytest.raises(ValueError, match=f"--curriculum: .*{message}"):
            parse_curriculum(bad)
    with pytest.raises(ValueError, match="v3 only"):
        spec_maker("v1", None, (5,))
    with pytest.raises(ValueError, match="unknown toy world"):
        spec_maker("v5", None)


def test_stage_at_and_resume_determinism():
    starts = (600, 1200, 2000)
    assert [stage_at(s, starts).name for s in (0, 599, 600, 1199, 1200, 1999, 2000, 10**6)] == [
        "narrow", "narrow", "textures", "textures", "backgrounds", "backgrounds", "full", "full"]
    assert stage_at(None, starts) == v3.FULL and stage_at(0, ()) == v3.FULL
    assert [stage_at(s, (10,)).name for s in (9, 10)] == ["narrow", "full"]  # fewer starts: skip to the whole world
    # the stage depends on the step alone: a stream resumed at any step draws what the uninterrupted one drew
    make = spec_maker("v3", None, (3, 6, 9))
    rng = np.random.default_rng([0, 11])
    full = [make(rng, step) for step in range(12)]
    rng = np.random.default_rng([0, 11])
    first = [make(rng, step) for step in range(5)]
    resumed = np.random.default_rng()
    resumed.bit_generator.state = rng.bit_generator.state
    assert first + [make(resumed, step) for step in range(5, 12)] == full
    assert {s.background for s in full[:3]} == {"white"}
    v1_make = spec_maker("v1", (1.0,))
    assert all(len(v1_make(np.random.default_rng(i), 0).objects) == 1 for i in range(5))


# -- the toy commands read the model's world -------------------------------------------------------------------------

def test_toy_eval_asks_a_v3_model_for_v3_captions(tmp_path):
    """A model folder that says v3 is evaluated on v3 captions (a v1 folder, unchanged, on v1's)."""
    import shutil

    from bas_toyworld.toy_eval import heldout_cases, run_toy_eval

    v1 = heldout_cases(8, seed=0)
    assert [c.caption for c in v1] == [c.caption for c in heldout_cases(8, seed=0, world="v1")]
    v3_cases = heldout_cases(8, seed=0, world="v3")
    for case in v3_cases:
        o = case.spec.objects[0]
        assert o.shape in v3.SHAPES and o.texture in v3.TEXTURES and case.spec.background in v3.BACKGROUNDS
        assert "large" not in case.caption
    assert all(v3.is_novel(c.spec.objects[0].concept) for c in v3_cases if c.novel)
    model = tmp_path / "model"
    shutil.copytree(V1_MODEL, model)            # v1's weights, labelled v3: the command must follow the label
    write_model_world(model, "v3")
    result = run_toy_eval(model, n=2, seed=0, steps=2, guidance=4.0)
    assert result["world"] == "v3" and result["captions"] == 2


def test_demo_and_fidelity_scenes_come_from_the_models_world():
    from bas_toyworld.extraction import prompt_cases
    from bas_toyworld.fidelity import fidelity_scene

    scene = fidelity_scene(0, "loose", None, "v3")
    assert scene.spec == v3.make_demo_scene(0).spec
    cases = prompt_cases(3, scene.spec.background, backgrounds=v3.BACKGROUNDS)
    contexts = [c.background for c in cases if c.kind == "context"]
    assert contexts and all(bg in v3.BACKGROUNDS and bg != scene.spec.background for bg in contexts)
    # v1 unchanged
    from bas_toyworld.world import make_demo_scene

    assert fidelity_scene(0, "loose").spec == make_demo_scene(0).spec


def test_v3_concept_scenes_hold_up_to_four_large_novel_concepts():
    assert get_world("v3").max_concepts == v3.MAX_CONCEPTS == 4 and get_world("v1").max_concepts == v1.MAX_CONCEPTS
    for n in range(1, v3.MAX_CONCEPTS + 1):
        for seed in range(4):
            scene = get_world("v3").make_concept_scene(seed, n)
            assert len(scene.concepts) == len(scene.spec.objects) == len(scene.loose_masks) == n
            assert all(v3.is_novel(c) for c in scene.concepts)
            assert all(o.size == v3.SIZE for o in scene.spec.objects) and scene.spec.background in v3.BACKGROUNDS
            assert len({c.colour for c in scene.concepts}) == n
            assert scene.caption == v3.caption(scene.spec)
    assert v3.make_concept_scene(2, 4).spec == v3.make_concept_scene(2, 4).spec != v3.make_concept_scene(3, 4).spec
    for bad in (0, 5):
        with pytest.raises(ValueError, match="1..4 in world v3"):
            v3.make_concept_scene(0, bad)


def test_the_concept_sweep_is_bounded_by_the_models_world(tmp_path):
    from bas_engine.errors import BASError
    from bas_toyworld.cli import _check_toy_model, _concept_counts
    from bas_toyworld.fidelity import FidelitySettings, check_settings, fidelity_scene

    model = tmp_path / "v3_model"
    model.mkdir()
    write_model_world(model, "v3")
    assert _concept_counts("1,2,4", str(model)) == (1, 2, 4)
    with pytest.raises(BASError, match="from 1 to 4 .*world v3"):
        _concept_counts("1,6", str(model))
    assert _concept_counts("6,8", None) == (6, 8)                      # the default model is v1's
    check_settings(FidelitySettings(model_dir=str(model), concepts=(1, 4)))
    with pytest.raises(ValueError, match="from 1 to 4"):
        check_settings(FidelitySettings(model_dir=str(model), concepts=(8,)))
    assert fidelity_scene(1, "loose", 3, "v3").spec == v3.make_concept_scene(1, 3).spec
    (model / WORLD_FILE).write_text('{"world": "v9"}')
    with pytest.raises(BASError, match="--model: unknown toy world 'v9'"):
        _check_toy_model(str(model))
