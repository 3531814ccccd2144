"""Sample grids and judge scores for a toy model, to see at a glance what pretraining achieved.

    python -m bas_toyworld.preview MODEL_DIR --out grid.png [--seeds 6 --steps 30 --guidance 4]

Rows are prompts, columns seeds. Next to the PNG a .json holds the judge's scores per prompt:
identity (shape/colour/texture of the requested object) and prompt fidelity (background).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .judge import detect, identity, prompt_fidelity
from .world import Concept, ObjectSpec, SceneSpec
from .worlds import get_world, model_world

#: colours of the preview's seen concepts, one per row (every world has v1's eight colours)
PREVIEW_COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "purple", "pink")


@dataclass(frozen=True)
class PreviewPrompt:
    text: str
    concept: Concept | None = None  # scored with judge.identity when set
    background: str | None = None  # scored with judge.prompt_fidelity when set


def default_prompts(world: str = "v1") -> list[PreviewPrompt]:
    """In ``world``'s own words and canonical captions: six seen concepts (each shape, the textures and backgrounds
    in turn), a two-object caption, and two of the world's novel concepts (which the base model has never seen as
    such: expect lower identity there)."""
    w = get_world(world)

    def one(concept: Concept, background: str) -> PreviewPrompt:
        obj = ObjectSpec(concept.shape, concept.colour, concept.texture, "large", 32.0, 32.0)
        return PreviewPrompt(w.caption(SceneSpec((obj,), background)), concept, background)

    out = [one(Concept(w.shapes[i % len(w.shapes)], colour, w.textures[i % len(w.textures)]),
               w.backgrounds[i % len(w.backgrounds)]) for i, colour in enumerate(PREVIEW_COLOURS)]
    first, last, background = w.shapes[0], w.shapes[-1], w.backgrounds[2 % len(w.backgrounds)]
    pair = SceneSpec((ObjectSpec(first, "orange", "solid", "large", 20.0, 32.0),
                      ObjectSpec(last, "cyan", "solid", "large", 44.0, 32.0)), background)
    out.append(PreviewPrompt(w.caption(pair), Concept(first, "orange", "solid"), background))
    out += [one(c, w.backgrounds[0]) for c in w.novel_concepts[:2]]
    return out


def sample(pipe, prompts: list[str], seeds: list[int], steps: int = 30, guidance: float = 4.0) -> list[list[np.ndarray]]:
    """rows[prompt][seed] -> uint8 HxWx3. Uses DDIM (the saved DDPM scheduler needs many steps)."""
    import torch
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    rows = []
    for text in prompts:
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        out = pipe([text] * len(seeds), num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="np").images
        rows.append([np.clip(np.round(im * 255), 0, 255).astype(np.uint8) for im in out])
    return rows


def save_grid(rows: list[list[np.ndarray]], path: str | Path, labels: list[str] | None = None, scale: int = 2) -> Path:
    """Write rows of equally sized images as one PNG, each row optionally captioned above it."""
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    label_h = 12 if labels else 0
    ncol = max(len(r) for r in rows)
    grid = Image.new("RGB", (ncol * (w + 2), len(rows) * (h + label_h + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = i * (h + label_h + 2)
        if labels:
            draw.text((2, y), labels[i], fill=(0, 0, 0))
        for j, im in enumerate(row):
            grid.paste(Image.fromarray(im).resize((w, h), Image.NEAREST), (j * (w + 2), y + label_h))
    from bas_engine.fileio import atomic_save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(grid, path)  # a sheet a killed run was writing is not left half-written
    return path


def score(rows: list[list[np.ndarray]], prompts: list[PreviewPrompt]) -> list[dict]:
    out = []
    for p, row in zip(prompts, rows):
        dets = [detect(im) for im in row]
        rec: dict = {"prompt": p.text, "n_objects": float(np.mean([len(d.objects) for d in dets]))}
        if p.concept is not None:
            rec["identity"] = float(np.mean([identity(d, p.concept) for d in dets]))
        if p.background is not None:
            rec["fidelity"] = float(np.mean([prompt_fidelity(d, p.background) for d in dets]))
        out.append(rec)
    return out


def preview(pipe_or_dir, out_png: str | Path, prompts: list[PreviewPrompt] | None = None, n_seeds: int = 6,
            steps: int = 30, guidance: float = 4.0, world: str | None = None) -> list[dict]:
    """Sample, save the grid PNG and a scores JSON next to it; return the scores. Without ``prompts``, the
    ``default_prompts`` of ``world`` (default: the model folder's world, or v1 for a pipeline)."""
    from .model import load_pipeline

    is_dir = isinstance(pipe_or_dir, (str, Path))
    pipe = load_pipeline(pipe_or_dir) if is_dir else pipe_or_dir
    world = world or (model_world(pipe_or_dir) if is_dir else "v1")
    prompts = prompts or default_prompts(world)
    rows = sample(pipe, [p.text for p in prompts], list(range(n_seeds)), steps, guidance)
    save_grid(rows, out_png, [p.text for p in prompts])
    scores = score(rows, prompts)
    Path(out_png).with_suffix(".json").write_text(json.dumps(scores, indent=1))
    return scores


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--out", default=None, help="PNG path (default MODEL_DIR/preview.png)")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = a.out or str(Path(a.model_dir) / "preview.png")
    for rec in preview(a.model_dir, out, n_seeds=a.seeds, steps=a.steps, guidance=a.guidance):
        print(json.dumps(rec))
    print("wrote", out)


if __name__ == "__main__":
    main()
