"""`bas toy-eval`: held-out one-object captions, the model's images and the world's renders judged side by side."""
import json

import pytest
import torch

from bas_toyworld.model import TOY_CONFIGS, build_scheduler, build_text_encoder, build_unet, build_vae, save_pipeline
from bas_toyworld.tokenizer import build_tokenizer, load_tokenizer
from bas_toyworld.toy_eval import ATTRIBUTES, NOVEL_EVERY, heldout_cases, verdicts
from bas_toyworld.world import NOVEL_CONCEPTS, caption, render_scene


def test_heldout_cases_are_one_object_canonical_and_include_novel_concepts():
    cases = heldout_cases(12, seed=3)
    assert [c.caption for c in cases] == [c.caption for c in heldout_cases(12, seed=3)]
    assert [c.caption for c in cases] != [c.caption for c in heldout_cases(12, seed=4)]
    assert all(len(c.spec.objects) == 1 and c.caption == caption(c.spec) for c in cases)
    novel = [c for i, c in enumerate(cases) if i % NOVEL_EVERY == NOVEL_EVERY - 1]
    assert all(c.novel and c.spec.objects[0].concept in NOVEL_CONCEPTS for c in novel)
    assert len({c.spec.background for c in cases}) > 1


def test_verdicts_on_a_render_and_on_a_blank_image():
    from bas_toyworld.judge import detect
    from bas_toyworld.world import SceneSpec

    case = heldout_cases(1, seed=0)[0]
    assert verdicts(detect(render_scene(case.spec)[0]), case.spec) == dict.fromkeys(ATTRIBUTES, True)
    empty = render_scene(SceneSpec((), case.spec.background))[0]
    v = verdicts(detect(empty), case.spec)
    assert v == {"shape": False, "colour": False, "texture": False, "background": True}


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A caption-blind model: the v1 design with random weights."""
    cfg = TOY_CONFIGS["v1"]
    tok = load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_pipeline(d, build_vae(cfg), build_unet(cfg), build_text_encoder(cfg, tok), tok, build_scheduler())
    return d


def test_cli_toy_eval_json_line(random_model, tmp_path, capsys):
    from bas_engine.cli import main

    sheet = tmp_path / "sheet.png"
    assert main(["toy-eval", "--model", str(random_model), "--captions", "8", "--steps", "2", "--seed", "1",
                 "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert out[0].split() == ["attribute", "model", "novel", "truth", "vae", "target"]
    for side in ("model", "truth", "vae", "model_novel"):
        assert set(result[side]) == set(ATTRIBUTES)
        assert all(0.0 <= v <= 1.0 for v in result[side].values())
    assert result["captions"] == 8 and result["seed"] == 1 and result["novel_captions"] == 2
    assert 0.0 <= result["model_no_object"] <= 1.0 and result["model_objects_mean"] >= 0.0
    # The judge reads the world's own renders right; a model that ignores the caption does far worse.
    assert min(result["truth"].values()) >= 0.875 and result["truth_all_right"] >= 0.875
    mean = lambda side: sum(result[side].values()) / len(ATTRIBUTES)  # noqa: E731
    assert mean("model") < mean("truth") - 0.3
    assert sheet.is_file()


def test_cli_toy_eval_errors(tmp_path, capsys):
    from bas_engine.cli import main

    assert main(["toy-eval", "--captions", "0"]) == 2
    assert "--captions must be at least 1" in capsys.readouterr().err
    assert main(["toy-eval", "--model", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_x0_probe_on_the_committed_model(research_script):
    """research/x0_probe.py: at low noise the one-step prediction keeps the render's attributes (the judge reads
    them); every timestep asked for gets the four shares."""
    from bas_toyworld.extraction import DEFAULT_MODEL

    probe = research_script("x0_probe")
    result = probe.x0_probe(str(DEFAULT_MODEL), scenes=4, timesteps=(50, 900))
    assert sorted(result) == [50, 900]
    assert all(set(acc) == {"shape", "colour", "texture", "background", "model_t"} for acc in result.values())
    assert all(0.0 <= acc[k] <= 1.0 for acc in result.values() for k in ("shape", "colour", "texture", "background"))
    assert result[50]["colour"] == 1.0 and result[50]["background"] == 1.0
    assert [acc["model_t"] for acc in result.values()] == [50, 900]
    # SD's noise levels on SD's schedule are its own timesteps
    assert probe.x0_probe(str(DEFAULT_MODEL), scenes=1, timesteps=(900,), sd_noise=True)[900]["model_t"] == 900


def test_attention_share_on_the_committed_model(research_script):
    """research/attention_share.py: one row per cross-attention layer at the model's attention resolutions, shares of
    one softmax (each in [0, 1], the words and the caption's end together at most 1)."""
    from bas_toyworld.extraction import DEFAULT_MODEL

    module = research_script("attention_share")
    result = module.attention_share(str(DEFAULT_MODEL), t=500, scenes=3)
    assert result and all(name.endswith("attn2") for name in result)
    assert {row["resolution"] for row in result.values()} == {16, 8}  # v1: cross-attention at 16x16 and 8x8
    for row in result.values():
        parts = [row[k] for k in ("colour", "texture", "shape", "eos+pad")]
        assert all(0.0 <= p <= 1.0 for p in parts) and sum(parts) <= 1.0 + 1e-5


def test_narrow_world_probe_on_the_committed_model(tmp_path, research_script):
    """research/narrow_world_probe.py: the narrowed world holds only what was asked; two fine-tuning steps change the
    UNet (the saved one differs from the model's), the shape gap is measured at every timestep before and after, and
    the judged shares are shares."""
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    from bas_toyworld.extraction import DEFAULT_MODEL

    module = research_script("narrow_world_probe")
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = module.narrow_spec(rng, "dotted", "small", "grass")
        (obj,) = scene.objects
        assert (obj.texture, obj.size, scene.background) == ("dotted", "small", "grass")
        big = module.narrow_spec(rng, "solid", "large", "white").objects[0]
        assert big.radius + 1 <= min(big.x, big.y, 64 - big.x, 64 - big.y) + 1e-9
        other = module.other_shape(scene, 3).objects[0]
        assert other.shape != obj.shape and other.colour == obj.colour
    scenes = [module.narrow_spec(rng, "any", "any", "any") for _ in range(60)]
    assert len({s.objects[0].texture for s in scenes}) == 4 and len({s.background for s in scenes}) == 6
    result = module.narrow_world_probe(str(DEFAULT_MODEL), steps=2, batch=2, scenes=2, gen=2, every=1,
                                       save=str(tmp_path / "unet"))
    assert sorted(result["gap"]) == [0, 1, 2]
    assert all(sorted(gap) == list(module.GAP_TIMESTEPS) for gap in result["gap"].values())
    assert result["gap"][2] != result["gap"][0]
    assert sorted(result["judged"]) == [0, 1, 2]
    for judged in result["judged"].values():
        assert set(judged) == {"shape", "colour", "texture", "background"}
        assert all(0.0 <= v <= 1.0 for v in judged.values())
    tuned = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    base = UNet2DConditionModel.from_pretrained(DEFAULT_MODEL, subfolder="unet")
    assert any(not torch.equal(a.float(), b.float()) for a, b in zip(tuned.parameters(), base.parameters()))


def test_word_spread_on_the_committed_model(research_script):
    """research/word_spread.py: the spread of equal vectors is 0 and their cosine 1; on the committed model every
    attribute (and the colour at the shape word) gets a spread and a cosine, and the template puts each word where
    the positions say (the tokenizer keeps every world word one token)."""
    import torch
    from transformers import CLIPTokenizer

    from bas_toyworld.extraction import DEFAULT_MODEL

    module = research_script("word_spread")
    same = module.spread(torch.ones(4, 8))
    assert same["spread"] == 0.0 and same["cosine"] == 1.0
    assert module.spread(torch.eye(4))["cosine"] == 0.0
    tokenizer = CLIPTokenizer.from_pretrained(DEFAULT_MODEL, subfolder="tokenizer")
    tokens = tokenizer.tokenize(module.TEMPLATE.format(**module.BASE))
    for attribute, position in module.WORD_INDEX.items():
        assert tokens[position - 1] == module.BASE[attribute] + "</w>"
    result = module.word_spread(str(DEFAULT_MODEL))
    assert set(result) == {"shape", "colour", "texture", "background", "colour@shape"}
    assert all(0.0 < r["spread"] < 2.0 and -1.0 <= r["cosine"] <= 1.0 for r in result.values())
    pairs = module.shape_cosines(str(DEFAULT_MODEL))  # v1's model: its world's six shapes
    assert sorted(pairs) == sorted(module.SHAPES) and all(sorted(row) == sorted(pairs) for row in pairs.values())
    assert all(pairs[s][s] == 1.0 and pairs[s][t] == pairs[t][s] and -1.0 <= pairs[s][t] <= 1.0
               for s in pairs for t in pairs)


def test_shape_confusion_counts_every_caption_once(random_model, tmp_path, research_script):
    """research/shape_confusion.py: one count per caption, in the row of the shape it asked for (toy-eval's captions),
    and a table with a share right per asked shape."""
    module = research_script("shape_confusion")
    sheet = tmp_path / "sheet.png"
    table = module.shape_confusion(str(random_model), captions=6, steps=2, sheet=str(sheet))
    assert sum(table.values()) == 6
    asked = sorted(c.spec.objects[0].shape for c in heldout_cases(6, seed=0))
    assert sorted(s for (s, _), n in table.items() for _ in range(n)) == asked
    lines = module.format_confusion(table).splitlines()
    assert len(lines) == 1 + len(set(asked)) and lines[0].split()[-1] == "right"
    assert sheet.is_file()


def test_demo_sweep_runs_a_variant_and_resumes(random_model, tmp_path, capsys, research_script):
    """research/demo_sweep.py: a variant's text becomes TrainConfig overrides (bad text is a clear error), one short
    variant trains and is scored with every summary score (and its images drawn on a sheet), and a sweep that finds a
    variant's record reads it instead of training again."""
    from bas_toyworld.demo import DemoSettings

    module = research_script("demo_sweep")
    assert module.parse_variant("hi:phase1_lr=2e-3,mode=full") == ("hi", {"phase1_lr": "2e-3", "mode": "full"})
    assert module.parse_variant("base:") == ("base", {})
    with pytest.raises(SystemExit, match="NAME:KEY=VALUE"):
        module.parse_variant("hi:phase1_lr")
    small = DemoSettings(phase1_steps=2, phase2_steps=2, image_seeds=(0,), sample_steps=2, contexts_per_concept=1)
    result = module.run_variant(str(random_model), small, {"phase1_lr": "1e-3", "lr_factor": "2"}, tmp_path / "s.png")
    assert set(result["scores"]) >= set(module.COLUMNS) and len(result["alone"]) == 3
    assert (tmp_path / "s.png").is_file()
    record = tmp_path / "sweep" / "short.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"overrides": {}, **result}))
    module.main(["--model", str(random_model), "--out", str(record.parent), "short:"])  # a record: nothing trains
    assert "| short {} |" in capsys.readouterr().out


def test_word_ceiling_spells_the_handles_out(random_model, research_script):
    """research/word_ceiling.py: every handle of a demo prompt becomes its own concept's words (in the order of the
    scene's concepts, as the world's captions spell them), and the demo's prompts in words are scored like the demo's
    (shares in [0, 1]; a mean row over the scenes)."""
    from bas_toyworld.demo import DemoSettings
    from bas_toyworld.worlds import get_world

    module = research_script("word_ceiling")
    for name in ("v1", "v3"):
        world = get_world(name)
        demo = world.make_demo_scene(0)
        words = module.concept_words(world, demo)
        assert [w.split()[-1] for w in words] == [c.shape for c in demo.concepts]
        assert all(c.colour in w and w.startswith("a ") for c, w in zip(demo.concepts, words))
        assert module.in_words("a photo of <asset1> and <asset0>", words) == f"a photo of {words[1]} and {words[0]}"
    small = DemoSettings(sample_steps=2, contexts_per_concept=1)
    result = module.word_ceiling(str(random_model), (0, 1), images=1, settings=small)
    assert sorted(result, key=str) == [0, 1, "mean"]
    assert all(0.0 <= result["mean"][k] <= 1.0 for k in module.COLUMNS)
