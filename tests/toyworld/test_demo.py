"""The committed toy model, `bas demo` (short run) and the pieces of `bas fidelity`."""
import json
import math

import numpy as np
import pytest
import torch

from bas_toyworld.extraction import (
    DEFAULT_MODEL, AttentionHistory, PromptCase, attention_ious, load_toy_model, prompt_cases, score_image,
    summary_scores,
)
from bas_toyworld.world import BACKGROUNDS, make_demo_scene


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


def test_committed_model_loads_through_the_engine(toy):
    from bas_engine.components import model_fingerprint
    from bas_toyworld.model import weights_size_mb

    assert (DEFAULT_MODEL / "model_index.json").is_file()
    assert weights_size_mb(DEFAULT_MODEL) <= 30
    assert toy.family == "sd1" and toy.prediction_type == "epsilon"
    assert toy.unet.dtype == torch.float32  # stored fp16, loaded fp32 for CPU training
    # The reproduction recipe travels with the weights.
    recipe = json.loads((DEFAULT_MODEL / "pretrain.json").read_text())
    assert "scripts/pretrain_toy.py" in recipe["command"] and "--seed" in recipe["command"]
    assert recipe["weights_sha256"]["unet"] and recipe["train_minutes"] <= 60
    assert len(model_fingerprint(toy.unet)) == 16


def test_committed_model_follows_prompts(toy):
    """Images drawn for a caption have its background and object colour far more often than the
    background and colour of another caption (a caption-blind model would score the same on both)."""
    from bas_engine.generate import build_pipeline
    from bas_toyworld import judge
    from bas_toyworld.world import BACKGROUND_PHRASES

    asks = [("night", "red", "circle"), ("white", "blue", "square"), ("grass", "yellow", "star"),
            ("gray", "orange", "ring"), ("beach", "purple", "cross"), ("tiles", "cyan", "triangle")]
    pipe = build_pipeline(toy)
    detections = []
    for bg, colour, shape in asks:
        gens = [torch.Generator().manual_seed(s) for s in range(4)]
        images = pipe([f"a large {colour} {shape} {BACKGROUND_PHRASES[bg]}"] * 4, num_inference_steps=20,
                      guidance_scale=4.0, generator=gens, output_type="np").images
        detections.append([judge.detect((img * 255).round().astype(np.uint8)) for img in images])

    def hit_rate(shift: int) -> float:
        hits = []
        for k, dets in enumerate(detections):
            bg, colour, _ = asks[(k + shift) % len(asks)]
            hits += [d.background == bg for d in dets] + [any(o.colour == colour for o in d.objects) for d in dets]
        return float(np.mean(hits))

    own, other = hit_rate(0), np.mean([hit_rate(s) for s in range(1, len(asks))])
    assert own >= 0.45 and own - other >= 0.25, (own, other)


def test_prompt_cases():
    cases = prompt_cases(3, "beach", contexts_per_concept=2)
    kinds = [c.kind for c in cases]
    assert kinds.count("alone") == 3 and kinds.count("pair") == 3 and kinds.count("context") == 6
    assert all(c.background != "beach" for c in cases if c.kind == "context")
    assert cases[3].prompt == "a photo of <asset0> and <asset1>" and cases[3].concepts == (0, 1)
    assert all(f"<asset{c.concepts[0]}>" in c.prompt for c in cases)
    # eight concepts: a fixed sample of max_pairs of the 28 pairs, the same for the same seed
    many = [c.concepts for c in prompt_cases(8, "beach", max_pairs=6, seed=4) if c.kind == "pair"]
    assert len(many) == len(set(many)) == 6 and all(i < j < 8 for i, j in many)
    assert many == [c.concepts for c in prompt_cases(8, "beach", max_pairs=6, seed=4) if c.kind == "pair"]
    assert len([c for c in prompt_cases(3, "beach", max_pairs=6) if c.kind == "pair"]) == 3  # fewer: all of them


def test_scores_of_rendered_truth():
    """Scoring the scene's own rendering: each concept is there, the scene background is right."""
    demo = make_demo_scene(0)
    s = score_image(demo.image, PromptCase("context", "x", (0,), demo.spec.background), demo)
    assert s.identity == 1.0 and s.fidelity == 1.0 and s.leakage == 1.0  # the other two are in the picture
    assert s.identities == (1.0,) and s.leakage_partial == 1.0
    other = next(b for b in BACKGROUNDS if b != demo.spec.background)
    assert score_image(demo.image, PromptCase("context", "x", (1, 2), other), demo).fidelity < 0.5


def test_attention_history_unflips_and_ious():
    from bas_engine.callbacks import PreviewEvent

    demo = make_demo_scene(0)
    masks = torch.stack([torch.from_numpy(m.reshape(16, 4, 16, 4).mean(axis=(1, 3), dtype=np.float32)) for m in demo.masks])
    history = AttentionHistory()
    history.update(PreviewEvent(1, 1, 1, 2, torch.zeros(3, 64, 64), masks.flip(-1), [True, True, False], [], True))
    history.update(PreviewEvent(1, 2, 2, 2, torch.zeros(3, 64, 64), masks, [False, False, True], [], False))
    assert np.isnan(history.maps[0][2]).all() and not np.isnan(history.maps[1]).any()
    ious = attention_ious(history, demo)
    assert all(iou > 0.6 for iou in ious), ious  # the exact masks, unflipped, match themselves
    mirrored = AttentionHistory()
    mirrored.update(PreviewEvent(1, 1, 1, 1, torch.zeros(3, 64, 64), masks.flip(-1), [True] * 3, [], False))
    assert np.mean(attention_ious(mirrored, demo)) < np.mean(ious) - 0.2  # not unflipping would be wrong


def test_summary_scores_keys():
    from bas_toyworld.extraction import SCORE_HELP, CaseResult, ScoredImage

    img = np.zeros((64, 64, 3), np.uint8)
    results = [CaseResult(PromptCase("alone", "a", (0,)), [ScoredImage(img, 0, 1.0, 0.5, None, (1.0,), 1.0)]),
               CaseResult(PromptCase("pair", "b", (0, 1)), [ScoredImage(img, 0, 1.0, 0.0, None, (1.0, 1.0)),
                                                            ScoredImage(img, 1, 5 / 6, 0.0, None, (1.0, 2 / 3)),
                                                            ScoredImage(img, 2, 2 / 3, 0.0, None, (1.0, 1 / 3))]),
               CaseResult(PromptCase("context", "c", (1,), "night"), [ScoredImage(img, 0, 0.5, 0.0, 1.0, (0.5,), 0.0)])]
    s = summary_scores(results, [0.2, 0.4])
    assert set(s) == set(SCORE_HELP)
    assert s["identity_alone"] == 1.0 and s["prompt_fidelity"] == 1.0
    assert math.isclose(s["pair_both_exact"], 1 / 3) and math.isclose(s["pair_both_2of3"], 2 / 3)
    assert s["leakage"] == 0.25 and s["leakage_2of3"] == 0.5 and math.isclose(s["attention_iou"], 0.3)
    # a one-concept scene: nothing can leak, so no leakage figure (NaN), not a perfect 0
    alone = [CaseResult(PromptCase("alone", "a", (0,)), [ScoredImage(img, 0, 1.0, float("nan"), None, (1.0,))])]
    lone = summary_scores(alone, [0.5])
    assert math.isnan(lone["leakage"]) and math.isnan(lone["leakage_2of3"]) and math.isnan(lone["pair_both_exact"])
    assert alone[0].mean("leakage") != alone[0].mean("leakage")  # NaN: the mean over no figures


def test_short_demo_run(tmp_path):
    from bas_engine.pack import load_pack
    from bas_toyworld.demo import DemoSettings, run_demo

    out = tmp_path / "demo"
    settings = DemoSettings(phase1_steps=6, phase2_steps=6, image_seeds=(0,), sample_steps=4, contexts_per_concept=1)
    lines = []
    payload = run_demo(out, settings=settings, log=lines.append)
    for name in ("report.html", "contact_sheet.png", "scores.json", "toy_scene.safetensors", "images/input.png",
                 "images/masks_loose.png", "images/losses.png"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert page.count("<img") >= 3 + 3 + 9 and "&lt;asset2&gt;" in page
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["cases"]) == 9 and len(scores["attention_iou_per_handle"]) == 3
    assert all(0.0 <= v <= 1.0 for v in scores["scores"].values())
    assert payload["scores"] == scores["scores"]
    pack = load_pack(out / "toy_scene.safetensors")
    assert pack.tokens == ["<asset0>", "<asset1>", "<asset2>"] and pack.meta["settings"]["phase1_steps"] == 6
    assert any(line.startswith("report:") for line in lines)
    assert not list(out.rglob(".tmp-*"))  # atomic writes left nothing half-written


def test_toy_config_scales_phase2_rates_only():
    from bas_engine.config import TrainConfig
    from bas_toyworld.extraction import TOY_LR_FACTOR, toy_config

    paper = TrainConfig()
    lora, full = toy_config(mode="lora"), toy_config(mode="full")
    assert lora.resolution == 64 and (lora.phase1_steps, lora.phase2_steps) == (400, 400)
    assert lora.phase1_lr == paper.phase1_lr and lora.attention_loss_weight == paper.attention_loss_weight
    assert math.isclose(lora.denoiser_lr, 1e-4 * TOY_LR_FACTOR) and math.isclose(full.denoiser_lr, 2e-6 * TOY_LR_FACTOR)
    assert math.isclose(lora.phase2_handle_lr, paper.phase2_handle_lr * TOY_LR_FACTOR)
    assert toy_config(masked_loss=False).masked_loss is False


def test_fidelity_statistics():
    from bas_toyworld.fidelity import mean_ci, t_critical_95

    assert t_critical_95(1) == 12.706 and t_critical_95(5) == 2.571 and t_critical_95(100) == 1.96
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(h, 4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5
    assert mean_ci([float("nan"), 1.0, 1.0]) == (1.0, 0.0)


def test_fidelity_variants_map_to_the_ablations():
    from bas_toyworld.fidelity import VARIANTS, FidelitySettings, variant_config

    s = FidelitySettings(phase1_steps=30, phase2_steps=20)
    method = variant_config("method", s, 0)
    assert (method.phase1_steps, method.phase2_steps, method.mode) == (30, 20, "lora")
    joint = variant_config("no_phase1", s, 0)
    assert joint.phase1_steps == 0 and joint.phase2_steps == 50 and joint.phase2_handle_lr == method.phase1_lr
    assert variant_config("no_masked_loss", s, 0).masked_loss is False
    assert variant_config("no_attention_loss", s, 0).attention_loss_weight == 0
    assert variant_config("no_union_sampling", s, 0).union_sampling is False
    assert variant_config("full_finetune", s, 0).mode == "full"
    assert set(VARIANTS) == {"method", "no_phase1", "no_masked_loss", "no_attention_loss", "no_union_sampling",
                             "full_finetune"}
    with pytest.raises(ValueError, match="not one of"):
        variant_config("bogus", s, 0)


def test_fidelity_tiny_run_and_resume(tmp_path):
    from bas_toyworld.fidelity import FidelitySettings, run_fidelity

    settings = FidelitySettings(variants=("method", "no_attention_loss"), scene_seeds=(1,), train_seeds=(0,),
                                phase1_steps=3, phase2_steps=3, image_seeds=(0,), sample_steps=3, workers=1)
    lines = []
    result = run_fidelity(tmp_path, settings, log=lines.append)
    assert len(result["records"]) == 2 and (tmp_path / "table.md").is_file()
    assert "| method | 1 |" in result["table"] and "| no_attention_loss | 1 |" in result["table"]
    # Attention is recorded for the IoU even when the attention loss is off.
    assert all(r["scores"]["attention_iou"] >= 0.0 for r in result["records"])
    assert all(len(r["images"]) == 9 and len(r["attention_iou_per_handle"]) == 3 for r in result["records"])
    lines.clear()
    again = run_fidelity(tmp_path, settings, log=lines.append)
    assert lines[0].startswith("2 runs already done, 0 to run") and len(again["records"]) == 2


def test_mask_qualities_for_the_mask_sweep():
    from bas_toyworld.mask_quality import MASK_QUALITIES, perturbed_masks, with_masks
    from bas_toyworld.world import make_demo_scene

    demo = make_demo_scene(1)
    exact = [np.asarray(m, bool) for m in demo.masks]
    got = {q: perturbed_masks(demo, q, seed=1) for q in MASK_QUALITIES}
    assert all(np.array_equal(a, b) for a, b in zip(got["exact"], exact))
    assert all(np.array_equal(a, b) for a, b in zip(got["loose"], demo.loose_masks))
    for e, dilated, eroded, shifted in zip(exact, got["dilated"], got["eroded"], got["shifted"]):
        assert (dilated >= e).all() and dilated.sum() > e.sum()          # grown all round
        assert (eroded <= e).all() and 0 < eroded.sum() < e.sum()         # shrunk, never empty
        assert shifted.sum() == e.sum() and not np.array_equal(shifted, e)  # moved (objects lie off the border)
    # never an empty mask, on any demo scene (the scene would be refused)
    for seed in range(10):
        scene = make_demo_scene(seed)
        assert all(m.sum() > 0 for q in MASK_QUALITIES for m in perturbed_masks(scene, q, seed))
    # the method is given the perturbed masks; the judge keeps the exact ones
    moved = with_masks(demo, "shifted", seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(moved.loose_masks, got["shifted"]))
    assert all(np.array_equal(a, b) for a, b in zip(moved.masks, demo.masks))
    with pytest.raises(ValueError, match="not one of"):
        perturbed_masks(demo, "blurry")


def test_fidelity_mask_sweep_tiny_run_and_resume(tmp_path):
    from bas_toyworld.fidelity import FidelitySettings, run_fidelity

    settings = FidelitySettings(variants=("method",), masks=("exact", "shifted"), scene_seeds=(1,), train_seeds=(0,),
                                phase1_steps=2, phase2_steps=2, image_seeds=(0,), sample_steps=2, workers=1)
    result = run_fidelity(tmp_path, settings, log=lambda line: None)
    assert sorted(r["masks"] for r in result["records"]) == ["exact", "shifted"]
    assert "| method | exact | 1 |" in result["table"] and "| method | shifted | 1 |" in result["table"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "method_masks-exact_scene1_seed0.json", "method_masks-shifted_scene1_seed0.json"]
    assert "the exact mask moved by 4 px" in (tmp_path / "table.md").read_text()
    assert result["plots"] == [str(tmp_path / "masks.png")] and _is_png(tmp_path / "masks.png")
    lines = []
    again = run_fidelity(tmp_path, settings, log=lines.append)
    assert lines[0].startswith("2 runs already done, 0 to run") and len(again["records"]) == 2


def _is_png(path) -> bool:
    from PIL import Image

    with Image.open(path) as picture:
        return picture.format == "PNG" and picture.size[0] > 500


def test_fidelity_concept_sweep_tiny_run_and_resume(tmp_path):
    from bas_toyworld.fidelity import FidelitySettings, run_fidelity

    settings = FidelitySettings(variants=("method",), concepts=(1, 8), scene_seeds=(1,), train_seeds=(0,),
                                phase1_steps=2, phase2_steps=2, image_seeds=(0,), sample_steps=2, workers=1)
    result = run_fidelity(tmp_path, settings, log=lambda line: None)
    by_count = {r["concepts"]: r for r in result["records"]}
    assert sorted(by_count) == [1, 8]
    # 1 concept: alone + context, no pair to score; 8 concepts: 8 alone, 6 of the 28 pairs, 8 contexts
    assert len(by_count[1]["images"]) == 2 and math.isnan(by_count[1]["scores"]["pair_both_exact"])
    assert math.isnan(by_count[1]["scores"]["leakage"])  # nothing to leak: no figure rather than a perfect one
    assert len(by_count[8]["images"]) == 22 and len(by_count[8]["attention_iou_per_handle"]) == 8
    assert "| method | 1 | 1 |" in result["table"] and "| method | 8 | 1 |" in result["table"]
    assert "| – |" in result["table"]  # the pair scores of a one-concept scene: nothing to average
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "method_concepts-1_scene1_seed0.json", "method_concepts-8_scene1_seed0.json"]
    assert result["plots"] == [str(tmp_path / "concepts.png")] and _is_png(tmp_path / "concepts.png")
    assert "![concepts](concepts.png)" in (tmp_path / "table.md").read_text()
    lines = []
    again = run_fidelity(tmp_path, settings, log=lines.append)
    assert lines[0].startswith("2 runs already done, 0 to run") and len(again["records"]) == 2
    with pytest.raises(ValueError, match="concepts: 9 is not a whole number from 1 to 8"):
        run_fidelity(tmp_path, FidelitySettings(concepts=(2, 9)), log=lambda line: None)


def test_cli_demo_and_fidelity_errors(capsys, tmp_path):
    from bas_engine.cli import main

    unused = str(tmp_path / "unused")
    assert main(["fidelity", "--variants", "method,bogus", "--out", unused]) == 2
    assert "unknown ['bogus']" in capsys.readouterr().err
    assert main(["fidelity", "--masks", "exact,blurry", "--out", unused]) == 2
    assert "--masks: unknown ['blurry']" in capsys.readouterr().err
    for bad, message in [("0", "'0' is not a number of concepts from 1 to 8"), ("2,9", "'9' is not a number"),
                         ("two", "'two' is not a number"), ("2,2", "lists a count twice")]:
        assert main(["fidelity", "--concepts", bad, "--out", unused]) == 2
        assert "--concepts: " in (err := capsys.readouterr().err) and message in err, err
    assert main(["demo", "--images", "0", "--out", unused]) == 2
    assert "--images must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--model", "/nonexistent/model", "--out", unused]) == 2
    assert "does not exist" in capsys.readouterr().err
