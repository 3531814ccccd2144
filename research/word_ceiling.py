"""How well does the base toy model draw ``bas demo``'s prompts when the concepts are spelled out in words?

The demo asks for each concept alone, every pair, and each concept in new contexts through its handles
(``a photo of <asset0> and <asset1>``). Here the same prompts, seeds, sampler and judge are used with each handle
replaced by its concept's words (``a photo of a pink striped cross and a cyan striped triangle``) on the model as
pretrained, no Break-A-Scene at all: the scores a handle could reach if it were exactly its words. A target above
these asks the base model for more than it does with words.

    python research/word_ceiling.py --model bas_toyworld/weights/toy_sd_v3 --scenes 0,1,2 --images 8
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from bas_engine.handles import default_tokens
from bas_engine.pack import HANDLE_RE
from bas_toyworld.demo import DemoSettings, demo_cases
from bas_toyworld.extraction import load_toy_model, score_cases, summary_scores
from bas_toyworld.world import BACKGROUND_PHRASES, DemoScene, SceneSpec
from bas_toyworld.worlds import World, get_world, model_world

COLUMNS = ("identity_alone", "identity_pair", "pair_both_exact", "pair_both_2of3", "identity_context",
           "prompt_fidelity", "leakage")


def concept_words(world: World, demo: DemoScene) -> list[str]:
    """Each concept of the scene as its world's captions spell one object ("a pink striped cross")."""
    words = []
    for obj in demo.spec.objects:
        text = world.caption(SceneSpec((obj,), demo.spec.background))
        words.append(text.removesuffix(" " + BACKGROUND_PHRASES[demo.spec.background]))
    return words


def in_words(prompt: str, words: list[str]) -> str:
    """``prompt`` with every handle (the engine's default tokens, ``<asset0>``, ...) replaced by its concept's words."""
    spelled = dict(zip(default_tokens(len(words)), words))
    return HANDLE_RE.sub(lambda m: spelled[m.group(0)], prompt)


def word_ceiling(model: str, scenes: tuple[int, ...], images: int, settings: DemoSettings | None = None) -> dict:
    """{scene: summary scores} of the demo's prompts in words on the base model, plus "mean" over the scenes."""
    from bas_engine.generate import build_pipeline

    settings = settings or DemoSettings()
    world = get_world(model_world(model))
    pipe = build_pipeline(load_toy_model(model))
    out: dict = {}
    for seed in scenes:
        demo = world.make_demo_scene(seed)
        cases = demo_cases(world, demo, settings)
        words = concept_words(world, demo)
        results = score_cases(pipe, demo, cases, tuple(range(images)), settings.sample_steps, settings.guidance,
                              prompts=[in_words(c.prompt, words) for c in cases])
        out[seed] = summary_scores(results, [float("nan")])
    out["mean"] = {k: float(np.mean([out[s][k] for s in scenes])) for k in COLUMNS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--scenes", default="0", help="demo scene seeds, comma-separated (the demo's is 0)")
    ap.add_argument("--images", type=int, default=8, help="images per prompt (seeds 0..N-1; the demo draws 4)")
    ap.add_argument("--guidance", type=float, default=DemoSettings.guidance, help="classifier-free guidance scale")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    scenes = tuple(int(s) for s in a.scenes.split(","))
    result = word_ceiling(a.model, scenes, a.images, DemoSettings(guidance=a.guidance))
    print("| scene | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for key, row in result.items():
        print(f"| {key} | " + " | ".join(f"{row[k]:.3f}" for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
