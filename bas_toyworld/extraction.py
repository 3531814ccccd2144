"""Break-A-Scene on toy scenes: train handles with the engine, generate with them, score with the judge.

Shared by ``bas demo`` (one scene, a report) and ``bas fidelity`` (many scenes and ablations, a table).
The method itself is entirely ``bas_engine``; this module only feeds it toy scenes and reads the
judge's verdicts.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import judge
from .world import BACKGROUND_PHRASES, BACKGROUNDS, DemoScene

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: committed toy models by design (bas_toyworld.model.TOY_CONFIGS); v2 is the same world with a model that should
#: draw shapes (issue 10); its weights go to weights/toy_sd_v2 when pretrained and measured
TOY_MODELS: dict[str, Path] = {"v1": WEIGHTS_DIR / "toy_sd", "v2": WEIGHTS_DIR / "toy_sd_v2",
                                # world v3 (issue 22, weights/PRETRAIN_V3.md): default only once it meets the targets
                                "v3": WEIGHTS_DIR / "toy_sd_v3"}
#: the model `bas demo`, `bas fidelity` and `bas toy-eval` use without --model: switches to a newer version only
#: once its weights are committed and `bas toy-eval` shows them meeting the targets
DEFAULT_VERSION = "v1"
DEFAULT_MODEL = TOY_MODELS[DEFAULT_VERSION]
TOY_RESOLUTION = 64


@dataclass(frozen=True)
class PromptCase:
    """One prompt to generate and how to score it."""

    kind: str                          # "alone" | "pair" | "context"
    prompt: str                        # with handle tokens, e.g. "a photo of <asset0> on the beach"
    concepts: tuple[int, ...]          # indices of the handles the prompt asks for
    background: str | None = None      # the context asked for (scored with prompt fidelity)


@dataclass
class ScoredImage:
    image: np.ndarray                  # uint8 HxWx3
    seed: int
    identity: float                    # mean over the requested concepts
    leakage: float                     # fraction of the not-requested scene concepts that appear (NaN: none)
    fidelity: float | None             # context prompts only
    identities: tuple[float, ...] = ()  # identity of each requested concept
    leakage_partial: float = float("nan")  # like leakage, counting a concept with 2 of its 3 attributes


@dataclass
class CaseResult:
    case: PromptCase
    images: list[ScoredImage]

    def mean(self, score: str) -> float:
        values = [v for i in self.images if (v := getattr(i, score)) is not None and not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")


@dataclass
class AttentionHistory:
    """Each handle's normalised attention map (unflipped) over training, as snapshots."""

    steps: list[int] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)  # each (N, h, w), NaN rows for unseen handles
    latest: np.ndarray | None = None  # each handle's map when it was last in a prompt

    def update(self, event) -> None:
        maps = event.maps.float().numpy()
        if event.flipped:
            maps = maps[:, :, ::-1]
        if self.latest is None:
            self.latest = np.full_like(maps, np.nan)
        for i, chosen in enumerate(event.chosen):
            if chosen:
                self.latest[i] = maps[i]
        self.steps.append(event.done)
        self.maps.append(self.latest.copy())

    def final_maps(self, last: int = 8) -> np.ndarray:
        """Mean of each handle's map over the last ``last`` snapshots: one step's map depends on its
        random timestep, the mean is the steadier picture of where a handle looks."""
        stack = np.stack(self.maps[-last:])
        with warnings.catch_warnings():  # a handle no step has chosen yet (a very short run) stays NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(stack, axis=0)


def engine_scene(demo: DemoScene, names: Sequence[str] | None = None, initializers: Sequence[str | None] | None = None):
    """The demo scene as a ``bas_engine.scene.Scene`` with its loose masks (what a user would paint)."""
    from bas_engine.scene import load_scene

    masks = [m.astype(np.float32) for m in demo.loose_masks]
    return load_scene(demo.image, masks, names=names, initializers=initializers)


def prompt_cases(n_concepts: int, scene_background: str, contexts_per_concept: int = 1,
                 pairs: bool = True, max_pairs: int | None = None, seed: int = 0,
                 backgrounds: Sequence[str] = tuple(BACKGROUNDS)) -> list[PromptCase]:
    """Each concept alone, every pair recombined (``max_pairs`` of them drawn with ``seed`` when there are more),
    and each concept in new contexts (``backgrounds`` other than the scene's: the model's world's), in the training
    prompt's wording."""
    from bas_engine.handles import default_tokens

    tok = default_tokens(n_concepts)
    cases = [PromptCase("alone", f"a photo of {tok[i]}", (i,)) for i in range(n_concepts)]
    if pairs:
        every_pair = [(i, j) for i in range(n_concepts) for j in range(i + 1, n_concepts)]
        if max_pairs is not None and len(every_pair) > max_pairs:
            # 8 concepts have 28 pairs: a fixed sample keeps a run's cost near that of 4 concepts (6 pairs)
            picked = np.random.default_rng([seed, 811]).choice(len(every_pair), max_pairs, replace=False)
            every_pair = [every_pair[k] for k in sorted(picked)]
        cases += [PromptCase("pair", f"a photo of {tok[i]} and {tok[j]}", (i, j)) for i, j in every_pair]
    others = [bg for bg in backgrounds if bg != scene_background]
    for i in range(n_concepts):
        for k in range(contexts_per_concept):
            bg = others[(i * contexts_per_concept + k) % len(others)]
            cases.append(PromptCase("context", f"a photo of {tok[i]} {BACKGROUND_PHRASES[bg]}", (i,), bg))
    return cases


# The paper's learning rates are for SD, pretrained at 1e-4; the toy model was pretrained at 8e-4. Phase 2's
# rates are scaled by that ratio (LoRA 1e-4 -> 8e-4, full 2e-6 -> 1.6e-5, handles in phase 2 2e-6 -> 1.6e-5);
# phase 1's embedding rate (5e-4) is the paper's. Everything else is the paper's recipe.
TOY_LR_FACTOR = 8.0


def toy_config(phase1_steps: int = 400, phase2_steps: int = 400, mode: str = "lora", seed: int = 0,
               lr_factor: float = TOY_LR_FACTOR, **overrides):
    """TrainConfig for the toy model: 64 px, phase-2 rates the paper's times ``lr_factor`` (the toy's pretraining
    rate over SD's)."""
    from bas_engine.config import TrainConfig

    paper = TrainConfig(mode=mode)
    settings = dict(phase1_steps=phase1_steps, phase2_steps=phase2_steps, mode=mode, resolution=TOY_RESOLUTION,
                    seed=seed, phase2_lr=paper.denoiser_lr * lr_factor,
                    phase2_handle_lr=paper.phase2_handle_lr * lr_factor)
    return TrainConfig(**{**settings, **overrides})


def load_toy_model(model_dir: str | Path | None = None):
    """The toy model's components in fp32 (stored fp16), through the engine's normal loader."""
    from bas_engine.models import load_model

    _quiet_loaders()
    return load_model(str(model_dir or DEFAULT_MODEL), dtype=torch.float32)


def _quiet_loaders() -> None:
    """No per-load progress bars or torchvision notices in the demo's output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def train_scene(components, demo: DemoScene, config, preview_every: int = 10,
                on_progress: Callable | None = None, device: str = "cpu"):
    """Run Break-A-Scene (the engine) on the demo scene; returns (pack, attention history)."""
    from bas_engine.callbacks import TrainCallbacks
    from bas_engine.trainer import train

    history = AttentionHistory()
    callbacks = TrainCallbacks(on_progress=on_progress, on_preview=history.update, preview_every=preview_every)
    pack = train(components, engine_scene(demo), config, callbacks, device=device)
    return pack, history


@torch.no_grad()
def generate_cases(components, pack, demo: DemoScene, cases: Sequence[PromptCase], seeds: Sequence[int],
                   steps: int = 25, guidance: float = 5.0) -> list[CaseResult]:
    """Generate every case for every seed with the pack applied to a copy of the model, and score."""
    from bas_engine.generate import apply_pack, build_pipeline

    pipe = build_pipeline(copy.deepcopy(components))  # apply_pack merges into the weights
    apply_pack(pipe, pack)
    return score_cases(pipe, demo, cases, seeds, steps, guidance)


@torch.no_grad()
def score_cases(pipe, demo: DemoScene, cases: Sequence[PromptCase], seeds: Sequence[int], steps: int = 25,
                guidance: float = 5.0, prompts: Sequence[str] | None = None) -> list[CaseResult]:
    """Generate every case for every seed with ``pipe`` and score each image for its case (``prompts``: the text
    to generate from instead of each case's prompt, e.g. the concepts in words)."""
    results = []
    for k, case in enumerate(cases):
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        text = prompts[k] if prompts is not None else case.prompt
        out = pipe([text] * len(seeds), num_inference_steps=steps, guidance_scale=guidance,
                   generator=generators, output_type="np").images
        images = [np.clip(np.round(img * 255), 0, 255).astype(np.uint8) for img in out]
        results.append(CaseResult(case, [score_image(img, case, demo, seed) for seed, img in zip(seeds, images)]))
    return results


@dataclass
class Extraction:
    """One Break-A-Scene run on a toy scene, and the judge's verdicts on what it generates."""

    pack: Any                          # bas_engine.pack.ConceptPack
    history: AttentionHistory
    results: list[CaseResult]
    ious: list[float]                  # per handle
    scores: dict[str, float]           # summary_scores
    train_s: float                     # loading the model + both phases


def extract_and_score(demo: DemoScene, config, cases: Sequence[PromptCase], image_seeds: Sequence[int], *,
                      model_dir: str | Path | None = None, sample_steps: int = 25, guidance: float = 5.0,
                      preview_every: int = 10, on_progress: Callable | None = None,
                      on_trained: Callable | None = None, device: str = "cpu") -> Extraction:
    """Train on the scene (the engine), generate every case for every seed, and score: the one run that
    ``bas demo`` reports on and ``bas fidelity`` repeats. ``on_trained(pack)`` runs before generation."""
    start = time.time()
    components = load_toy_model(model_dir)
    pack, history = train_scene(components, demo, config, preview_every, on_progress, device)
    train_s = time.time() - start
    if on_trained is not None:
        on_trained(pack)
    results = generate_cases(components, pack, demo, cases, image_seeds, sample_steps, guidance)
    ious = attention_ious(history, demo)
    return Extraction(pack, history, results, ious, summary_scores(results, ious), train_s)


def score_image(image: np.ndarray, case: PromptCase, demo: DemoScene, seed: int = -1) -> ScoredImage:
    """The judge's verdict on one generated image for the prompt it was made for."""
    det = judge.detect(image)
    asked = [demo.concepts[i] for i in case.concepts]
    others = [c for i, c in enumerate(demo.concepts) if i not in case.concepts]
    identities = tuple(judge.identity(det, c) for c in asked)
    # A one-concept scene has nothing to leak: no figure rather than a perfect one.
    leak = judge.leakage(det, others) if others else float("nan")
    # The concepts of a demo scene have distinct colours, so 2 of 3 attributes of a concept not asked
    # for (its colour with its shape or texture) is that concept showing up, drawn imperfectly.
    leak_partial = judge.leakage(det, others, threshold=2 / 3) if others else float("nan")
    fid = judge.prompt_fidelity(det, case.background) if case.background else None
    return ScoredImage(image, seed, float(np.mean(identities)), leak, fid, identities, leak_partial)


def attention_ious(history: AttentionHistory, demo: DemoScene) -> list[float]:
    """IoU of each handle's final attention map with its object's exact mask."""
    maps = history.final_maps()
    return [judge.attention_iou(np.nan_to_num(maps[i]), demo.masks[i]) for i in range(len(demo.concepts))]


def summary_scores(results: Sequence[CaseResult], ious: Sequence[float]) -> dict[str, float]:
    """One number per score for a run (means over prompts and seeds)."""
    def mean_of(kind: str, score: str) -> float:
        values = [getattr(i, score) for r in results if r.case.kind == kind for i in r.images]
        return float(np.mean(values)) if values else float("nan")

    pairs = [i for r in results if r.case.kind == "pair" for i in r.images]
    pair_both = [float(i.identity >= 1.0 - 1e-9) for i in pairs]
    pair_both_2of3 = [float(min(i.identities or (i.identity,)) >= 2 / 3 - 1e-9) for i in pairs]
    singles = [i for r in results if r.case.kind in ("alone", "context") for i in r.images]
    leak = [i.leakage for i in singles if not np.isnan(i.leakage)]
    leak_partial = [i.leakage_partial for i in singles if not np.isnan(i.leakage_partial)]
    return {
        "identity_alone": mean_of("alone", "identity"),
        "identity_pair": mean_of("pair", "identity"),
        "pair_both_exact": float(np.mean(pair_both)) if pair_both else float("nan"),
        "pair_both_2of3": float(np.mean(pair_both_2of3)) if pair_both_2of3 else float("nan"),
        "identity_context": mean_of("context", "identity"),
        "prompt_fidelity": mean_of("context", "fidelity"),
        "leakage": float(np.mean(leak)) if leak else float("nan"),
        "leakage_2of3": float(np.mean(leak_partial)) if leak_partial else float("nan"),
        "attention_iou": float(np.mean(ious)),
    }


SCORE_HELP = {
    "identity_alone": "concept alone: share of its shape/colour/texture found (1 = exact)",
    "identity_pair": "two concepts in one prompt: mean identity of both",
    "pair_both_exact": "two concepts in one prompt: share of images with both exactly right",
    "pair_both_2of3": "two concepts in one prompt: share of images with both at least 2 of 3 attributes right",
    "identity_context": "concept in a new context: identity",
    "prompt_fidelity": "concept in a new context: the background asked for is there",
    "leakage": "concepts not asked for that appear anyway, exactly (lower is better)",
    "leakage_2of3": "concepts not asked for that appear with at least 2 of 3 attributes (lower is better)",
    "attention_iou": "each handle's cross-attention vs its object's exact mask (IoU)",
}
