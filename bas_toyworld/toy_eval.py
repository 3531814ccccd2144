"""`bas toy-eval`: how well the base toy model (no extraction) draws what a caption asks for.

Held-out single-object captions ("a large orange checkered star on the beach") are drawn from a random
stream of their own (separate from pretraining's); every fourth one is one of the world's
``NOVEL_CONCEPTS`` (an attribute combination pretraining never shows), the others are random concepts
(novel ones included at their natural rate). For each caption the model draws one image and the judge
detects its objects; the object that matches the asked concept best (most of shape, colour, texture
agreeing, as ``judge.identity`` picks it) gives the shape / colour / texture verdicts, and the detected
background gives the background verdict. An image with no detected object gets shape, colour and texture
wrong. The world's own render of the same caption is scored the same way: the judge's accuracy on truth
is the ceiling the model's figures are read against. So is the render passed through the model's VAE (encode,
decode): the best the model could draw with its latent space ("vae" column).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .judge import Detection, detect
from .world import ObjectSpec, SceneSpec, render_scene
from .worlds import get_world, model_world

ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "texture", "background")
#: every NOVEL_EVERY-th caption asks for a novel concept (attribute combination unseen in pretraining)
NOVEL_EVERY = 4
#: the issue's targets for the base model (share of images with the attribute right)
TARGETS: dict[str, float] = {"shape": 0.85, "colour": 0.95, "texture": 0.80, "background": 0.95}


@dataclass(frozen=True)
class EvalCase:
    spec: SceneSpec  # one object
    caption: str
    novel: bool


def heldout_cases(n: int, seed: int = 0, world: str = "v1") -> list[EvalCase]:
    """``n`` single-object captions of ``world`` (``bas_toyworld.worlds``) from a stream of their own
    (``[seed, 4041]``), canonical wording."""
    w = get_world(world)
    rng = np.random.default_rng([seed, 4041])
    cases = []
    for i in range(n):
        spec = w.random_spec(rng, allow_novel=True, count_weights=(1.0,))
        novel = i % NOVEL_EVERY == NOVEL_EVERY - 1
        if novel:  # same size, place and background; the concept becomes a novel one
            c = w.novel_concepts[int(rng.integers(len(w.novel_concepts)))]
            o = spec.objects[0]
            spec = SceneSpec((ObjectSpec(c.shape, c.colour, c.texture, o.size, o.x, o.y, o.scale),), spec.background)
        cases.append(EvalCase(spec, w.caption(spec), novel))
    return cases


def scored_object(det: Detection, spec: SceneSpec):
    """The detected object a one-object caption is scored on: the one matching the asked concept best (then the
    largest); None where the judge found no object."""
    want = spec.objects[0].concept
    return max(det.objects, key=lambda o: (o.matches(want), int(o.mask.sum())), default=None)


def verdicts(det: Detection, spec: SceneSpec) -> dict[str, bool]:
    """Which of shape / colour / texture / background the image got right for a one-object caption."""
    want = spec.objects[0].concept
    best = scored_object(det, spec)
    out = {a: best is not None and getattr(best, a) == getattr(want, a) for a in ("shape", "colour", "texture")}
    out["background"] = det.background == spec.background
    return out


def accuracy(rows: Sequence[dict[str, bool]]) -> dict[str, float]:
    """Share of rows with each attribute right."""
    return {a: float(np.mean([r[a] for r in rows])) if rows else 0.0 for a in ATTRIBUTES}


def generate(pipe, captions: Sequence[str], seed: int, steps: int = 30, guidance: float = 4.0,
             batch: int = 16) -> list[np.ndarray]:
    """One uint8 image per caption; image i uses the generator seeded ``seed * 100003 + i`` (DDIM)."""
    import torch
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images: list[np.ndarray] = []
    for start in range(0, len(captions), batch):
        chunk = list(captions[start:start + batch])
        gens = [torch.Generator("cpu").manual_seed(seed * 100003 + start + j) for j in range(len(chunk))]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np").images
        images += [np.clip(np.round(im * 255), 0, 255).astype(np.uint8) for im in out]
    return images


def reconstruct(vae, images: Sequence[np.ndarray], batch: int = 32) -> list[np.ndarray]:
    """The VAE's reconstructions (posterior mean) of uint8 images: what the model could draw at best."""
    import torch

    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[start:start + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            x = x.to(vae.device, vae.dtype)
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            out += list(((rec.permute(0, 2, 3, 1).float().cpu().numpy() + 1) * 127.5).round().astype(np.uint8))
    return out


def toy_eval(pipe, n: int = 200, seed: int = 0, steps: int = 30, guidance: float = 4.0,
             sheet: str | Path | None = None, world: str = "v1") -> dict:
    """Score the model's images and the world's renders of ``n`` held-out captions of ``world`` (the one the model
    was trained on); the result dict is what `bas toy-eval` prints as its JSON line. The judge is the same for
    every world (one renderer); it knows v1's larger vocabulary, so on v3 it can only be stricter."""
    cases = heldout_cases(n, seed, world)
    images = generate(pipe, [c.caption for c in cases], seed, steps, guidance)
    model_dets = [detect(im) for im in images]
    model_rows = [verdicts(d, c.spec) for d, c in zip(model_dets, cases)]
    truth = [render_scene(c.spec)[0] for c in cases]
    truth_rows = [verdicts(detect(im), c.spec) for im, c in zip(truth, cases)]
    vae_rows = [verdicts(detect(im), c.spec) for im, c in zip(reconstruct(pipe.vae, truth), cases)]
    novel_rows = [r for r, c in zip(model_rows, cases) if c.novel]

    def exact(rows):
        return float(np.mean([all(r[a] for a in ATTRIBUTES) for r in rows])) if rows else 0.0

    if sheet is not None:
        from .preview import save_grid

        save_grid([truth[i:i + 8] for i in range(0, min(32, len(truth)), 8)]
                  + [images[i:i + 8] for i in range(0, min(32, len(images)), 8)], sheet)
    return {"model": accuracy(model_rows), "truth": accuracy(truth_rows), "vae": accuracy(vae_rows),
            "model_all_right": exact(model_rows), "truth_all_right": exact(truth_rows),
            "model_novel": accuracy(novel_rows), "novel_captions": len(novel_rows),
            # objects the judge finds in the model's images (1 asked): 0 = only shapeless blobs or nothing
            "model_objects_mean": float(np.mean([len(d.objects) for d in model_dets])) if model_dets else 0.0,
            "model_no_object": float(np.mean([not d.objects for d in model_dets])) if model_dets else 0.0,
            "captions": n, "seed": seed, "steps": steps, "guidance": guidance, "targets": TARGETS, "world": world}


def format_table(result: dict) -> str:
    """The per-attribute table `bas toy-eval` prints above its JSON line."""
    lines = [f"{'attribute':<11} {'model':>6} {'novel':>6} {'truth':>6} {'vae':>6} {'target':>7}"]
    for a in ATTRIBUTES:
        lines.append(f"{a:<11} {result['model'][a]:>6.3f} {result['model_novel'][a]:>6.3f} "
                     f"{result['truth'][a]:>6.3f} {result['vae'][a]:>6.3f} {TARGETS[a]:>7.2f}")
    lines.append(f"{'all four':<11} {result['model_all_right']:>6.3f} {'':>6} {result['truth_all_right']:>6.3f}")
    lines.append(f"objects found per model image: {result['model_objects_mean']:.2f} (1 asked); none found in "
                 f"{result['model_no_object']:.1%} (blobs that fit no shape are not objects to the judge)")
    lines.append(f"({result['captions']} held-out one-object captions of world {result.get('world', 'v1')}, "
                 f"seed {result['seed']}, "
                 f"{result['novel_captions']} of them novel concepts; DDIM {result['steps']} steps, "
                 f"guidance {result['guidance']})")
    return "\n".join(lines)


def run_toy_eval(model_dir: str | Path, n: int, seed: int, steps: int, guidance: float,
                 sheet: str | Path | None = None) -> dict:
    """Load the model folder, evaluate, print the table and the JSON line; return the result."""
    from .model import load_pipeline

    world = model_world(model_dir)
    pipe = load_pipeline(model_dir)
    result = toy_eval(pipe, n, seed, steps, guidance, sheet, world)
    result["model_dir"] = str(model_dir)
    print(format_table(result))
    print(json.dumps(result))
    return result
