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
from .world import BACKGROUND_PHRASES, NOVEL_CONCEPTS, Concept


@dataclass(frozen=True)
class PreviewPrompt:
    text: str
    concept: Concept | None = None  # scored with judge.identity when set
    background: str | None = None  # scored with judge.prompt_fidelity when set


def default_prompts() -> list[PreviewPrompt]:
    """Seen concepts on several backgrounds, a two-object caption, and two novel concepts (which
    the base model has never seen as such: expect lower identity there)."""
    seen = [
        (Concept("star", "red", "solid"), "large", "white"),
        (Concept("ring", "blue", "striped"), "large", "beach"),
        (Concept("square", "green", "dotted"), "large", "night"),
        (Concept("triangle", "yellow", "checkered"), "large", "gray"),
        (Concept("cross", "purple", "solid"), "large", "grass"),
        (Concept("circle", "pink", "striped"), "small", "tiles"),
    ]
    out = [PreviewPrompt(f"a {size} {c.phrase()} {BACKGROUND_PHRASES[bg]}", c, bg) for c, size, bg in seen]
    out.append(PreviewPrompt("a large orange circle and a small cyan cross on the beach", Concept("circle", "orange", "solid"), "beach"))
    for c in NOVEL_CONCEPTS[:2]:
        out.append(PreviewPrompt(f"a large {c.phrase()} on a white background", c, "white"))
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
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
            steps: int = 30, guidance: float = 4.0) -> list[dict]:
    """Sample, save the grid PNG and a scores JSON next to it; return the scores."""
    from .model import load_pipeline

    pipe = load_pipeline(pipe_or_dir) if isinstance(pipe_or_dir, (str, Path)) else pipe_or_dir
    prompts = prompts or default_prompts()
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
