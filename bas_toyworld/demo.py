"""``bas demo``: Break-A-Scene end to end on a toy scene, with a report a person can look at.

Three novel objects (never seen in pretraining) with loose masks -> the two-phase method on the
committed toy model -> each concept alone, every pair, and each concept in new contexts -> judge scores.
Writes ``report.html`` (with PNGs), ``scores.json`` and the concept pack into the output folder.
"""
from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from bas_engine.handles import default_tokens
from bas_engine.preview import PALETTE, attention_overlay, mask_overlay

from .extraction import (
    DEFAULT_MODEL, SCORE_HELP, CaseResult, PromptCase, extract_and_score, prompt_cases, toy_config,
)
from .world import DemoScene
from .worlds import World, get_world, model_world

ZOOM = 3  # 64 px pictures are shown at 192 px


@dataclass
class DemoSettings:
    scene_seed: int = 0
    phase1_steps: int = 400           # the paper's defaults; on the toy model both phases take ~2 min on 2 CPU cores
    phase2_steps: int = 400
    mode: str = "lora"
    image_seeds: tuple[int, ...] = (0, 1, 2, 3)
    sample_steps: int = 25
    guidance: float = 5.0
    contexts_per_concept: int = 2
    train_seed: int = 0


def demo_config(settings: DemoSettings):
    """The engine settings for the toy: the paper's method at the toy model's 64 px and learning rates."""
    return toy_config(settings.phase1_steps, settings.phase2_steps, settings.mode, settings.train_seed)


def demo_cases(world: World, demo: DemoScene, settings: DemoSettings) -> list[PromptCase]:
    """The demo's prompts for ``demo``: each concept alone, every pair, each concept on
    ``settings.contexts_per_concept`` of its world's other backgrounds."""
    return prompt_cases(len(demo.concepts), demo.spec.background, settings.contexts_per_concept,
                        backgrounds=world.backgrounds)


def run_demo(out_dir: str | Path, model_dir: str | Path | None = None, settings: DemoSettings | None = None,
             log: Callable[[str], None] = print, device: str = "cpu") -> dict:
    """Run the demo and write the report; returns the summary scores and timings."""
    from bas_engine.fileio import atomic_write_text
    from bas_engine.pack import save_pack

    settings = settings or DemoSettings()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    world = get_world(model_world(model_dir or DEFAULT_MODEL))       # the scene comes from the model's world
    demo = world.make_demo_scene(settings.scene_seed)
    names = ", ".join(f"{token} = {c.phrase()}" for token, c in zip(default_tokens(len(demo.concepts)), demo.concepts))
    log(f"scene {settings.scene_seed}: {names}, {demo.spec.background} background")
    config = demo_config(settings)
    total = config.phase1_steps + config.phase2_steps
    losses: dict[str, list[float]] = {}

    def on_progress(event) -> None:
        for key, value in event.losses.items():
            losses.setdefault(f"phase{event.phase}_{key}", []).append(value)
        if event.step == event.steps or event.done % 100 == 0:
            log(f"  phase {event.phase} step {event.step}/{event.steps} "
                + " ".join(f"{k} {v:.4f}" for k, v in event.losses.items() if k != "loss"))

    def on_trained(pack) -> None:
        save_pack(pack, out / "toy_scene.safetensors")  # kept even if generation fails
        log(f"generating {len(cases)} prompts x {len(settings.image_seeds)} seeds")

    log(f"training: phase 1 {config.phase1_steps} steps (handles), phase 2 {config.phase2_steps} steps ({config.mode})")
    cases = demo_cases(world, demo, settings)
    run = extract_and_score(demo, config, cases, settings.image_seeds, model_dir=model_dir,
                            sample_steps=settings.sample_steps, guidance=settings.guidance,
                            preview_every=max(1, total // 40), on_progress=on_progress, on_trained=on_trained,
                            device=device)
    history, results, ious, scores = run.history, run.results, run.ious, run.scores
    timings = {"train_s": round(run.train_s, 1), "total_s": round(time.time() - t0, 1)}
    report = write_report(out, demo, history, results, ious, scores, losses, settings, timings, model_dir)
    payload = {"scores": scores, "attention_iou_per_handle": ious, "timings": timings,
               "scene_seed": settings.scene_seed, "concepts": [c.phrase() for c in demo.concepts],
               "cases": [{"kind": r.case.kind, "prompt": r.case.prompt,
                          "identity": r.mean("identity"), "leakage": r.mean("leakage"),
                          "fidelity": r.mean("fidelity") if r.case.background else None} for r in results]}
    atomic_write_text(out / "scores.json", json.dumps(payload, indent=1))
    for key, value in scores.items():
        log(f"  {key:17s} {value:.3f}   ({SCORE_HELP[key]})")
    log(f"report: {report}  ({timings['total_s']:.0f} s)")
    return payload


# -- pictures -----------------------------------------------------------------------------------------
def _zoom(image: np.ndarray, zoom: int = ZOOM) -> Image.Image:
    return Image.fromarray(image).resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST)


def _image_tensor(image: np.ndarray, zoom: int = 1) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H*zoom, W*zoom) in [0, 1], pixels repeated (the engine's preview layout)."""
    t = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return t.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)


def mask_picture(demo: DemoScene, tokens: list[str], loose: bool = True) -> Image.Image:
    """The input with each (loose) mask tinted and labelled in its handle's colour (the engine's overlay)."""
    masks = np.stack(demo.loose_masks if loose else demo.masks).astype(np.float32)
    zoomed = torch.from_numpy(masks).repeat_interleave(ZOOM, 1).repeat_interleave(ZOOM, 2)
    return mask_overlay(_image_tensor(demo.image, ZOOM), zoomed, tokens)


def attention_tiles(demo: DemoScene, maps: np.ndarray, tokens: list[str], tile: int = 128) -> list[Image.Image]:
    """One picture per handle: its attention map as a heat tint over the input (the engine's overlay).
    NaN rows are handles not in any prompt yet."""
    seen = [not np.isnan(m).all() for m in maps]
    sheet = attention_overlay(_image_tensor(demo.image), torch.from_numpy(np.nan_to_num(maps)), tokens, seen, tile)
    return [sheet.crop((i * tile, 0, (i + 1) * tile, tile)) for i in range(len(tokens))]


def _save(picture: Image.Image, out: Path, rel: str) -> str:
    from bas_engine.fileio import atomic_save_image

    atomic_save_image(picture, out / rel)
    return rel


# -- report -------------------------------------------------------------------------------------------
def write_report(out: Path, demo: DemoScene, history, results: list[CaseResult], ious: list[float],
                 scores: dict[str, float], losses: dict[str, list[float]], settings: DemoSettings,
                 timings: dict, model_dir) -> Path:
    """report.html with the input, masks, attention over training, generated images and scores."""
    from bas_engine.fileio import atomic_write_text
    from bas_engine.preview import loss_curve

    e = html.escape
    tokens = default_tokens(len(demo.concepts))
    parts = [f"<h1>Break-A-Scene on a toy scene</h1><p>Scene seed {settings.scene_seed}; model "
             f"{e(str(model_dir or DEFAULT_MODEL.name))}; phase 1 {settings.phase1_steps} + phase 2 "
             f"{settings.phase2_steps} steps ({e(settings.mode)}); training {timings['train_s']:.0f} s, "
             f"total {timings['total_s']:.0f} s on {e(_device_name())}.</p>"]
    # Every picture is made once and used by both the page and the contact sheet.
    inputs = [_zoom(demo.image), mask_picture(demo, tokens), mask_picture(demo, tokens, loose=False)]
    picks = np.unique(np.linspace(0, len(history.steps) - 1, min(8, len(history.steps))).astype(int))
    attention = {k: attention_tiles(demo, history.maps[k], tokens) for k in picks}
    parts.append("<h2>Input</h2><div class=row>")
    parts.append(_figure(_save(inputs[0], out, "images/input.png"), e(demo.caption)))
    parts.append(_figure(_save(inputs[1], out, "images/masks_loose.png"), "loose masks (training input)"))
    parts.append(_figure(_save(inputs[2], out, "images/masks_exact.png"), "exact masks (judge only)"))
    parts.append("</div><ul>" + "".join(
        f"<li><span style='color:rgb{tuple(int(c * 255) for c in PALETTE[i % len(PALETTE)])}'>■</span> "
        f"{e(tokens[i])}: {e(c.phrase())} (novel: never in pretraining)</li>" for i, c in enumerate(demo.concepts))
        + "</ul>")

    parts.append("<h2>Cross-attention of each handle over training</h2><p>Maps at 1/4 of the latent "
                 "resolution, mean over layers and heads, divided by their max (the attention loss's input); "
                 "phase 2 starts at step " f"{settings.phase1_steps}. IoU with the exact mask at the end: "
                 + ", ".join(f"{e(t)} {v:.2f}" for t, v in zip(tokens, ious)) + "</p><table class=att>")
    parts.append("<tr><th></th>" + "".join(f"<th>step {history.steps[k]}</th>" for k in picks) + "</tr>")
    for h, token in enumerate(tokens):
        row = [f"<th>{e(token)}</th>"]
        for k in picks:
            rel = _save(attention[k][h], out, f"images/attention_{h}_{history.steps[k]}.png")
            row.append(f"<td><img src='{rel}' width=128></td>")
        parts.append("<tr>" + "".join(row) + "</tr>")
    parts.append("</table>")
    if losses:
        parts.append("<h2>Losses</h2>")
        parts.append(_figure(_save(loss_curve(losses), out, "images/losses.png"), "per-step losses (log scale)"))

    parts.append("<h2>Scores</h2><table class=scores><tr><th>score</th><th>value</th><th>meaning</th></tr>")
    parts += [f"<tr><td>{k}</td><td>{v:.3f}</td><td>{e(SCORE_HELP[k])}</td></tr>" for k, v in scores.items()]
    parts.append("</table>")
    titles = {"alone": "Each concept alone", "pair": "Pairs recombined", "context": "Concepts in new contexts"}
    for kind, title in titles.items():
        rows = [r for r in results if r.case.kind == kind]
        if not rows:
            continue
        parts.append(f"<h2>{title}</h2><table class=gen>")
        for ci, r in enumerate(rows):
            cells = []
            for img in r.images:
                rel = _save(_zoom(img.image, 2), out, f"images/{kind}_{ci}_seed{img.seed}.png")
                text = f"id {img.identity:.2f}, leak {img.leakage:.2f}" + (
                    f", ctx {img.fidelity:.2f}" if img.fidelity is not None else "")
                cells.append(f"<td><img src='{rel}' width=128><br><small>{text}</small></td>")
            parts.append(f"<tr><th>{e(r.case.prompt)}</th>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("<p><small>id: share of the requested concepts' shape/colour/texture found by the judge "
                 "(1 = exact); leak: share of the scene's other concepts that appear; ctx: the requested "
                 "background is there. The judge is a detector built from the renderer's rules "
                 "(bas_toyworld/judge.py).</small></p>")
    style = ("<style>body{font-family:sans-serif;margin:2em;background:#fafafa}.row{display:flex;gap:1em}"
             "figure{margin:0}img{image-rendering:pixelated}table{border-collapse:collapse}"
             "td,th{padding:4px;text-align:center;vertical-align:top}.scores td{text-align:left}</style>")
    page = f"<!doctype html><html><head><meta charset=utf-8><title>Break-A-Scene toy demo</title>{style}</head><body>"
    page += "\n".join(parts) + "</body></html>"
    path = out / "report.html"
    atomic_write_text(path, page)
    attention_rows = [(f"{token} attention, steps {history.steps[picks[0]]},{history.steps[picks[-1]]}",
                       [attention[k][h] for k in picks]) for h, token in enumerate(tokens)]
    _save(contact_sheet(inputs, attention_rows, results), out, "contact_sheet.png")
    return path


def contact_sheet(inputs: list[Image.Image], attention_rows: list[tuple[str, list[Image.Image]]],
                  results: list[CaseResult]) -> Image.Image:
    """The report on one PNG: input and masks, attention over training, every generated image."""
    tile, label_w, pad = 96, 260, 4
    rows = [("input | loose masks | exact masks", inputs)] + attention_rows
    for r in results:
        scores = f"id {r.mean('identity'):.2f} leak {r.mean('leakage'):.2f}" + (
            f" ctx {r.mean('fidelity'):.2f}" if r.case.background else "")
        rows.append((f"{r.case.prompt}\n{scores}", [_zoom(i.image, 2) for i in r.images]))
    width = label_w + max(len(pics) for _, pics in rows) * (tile + pad)
    sheet = Image.new("RGB", (width, len(rows) * (tile + pad) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    for y, (text, pics) in enumerate(rows):
        top = pad + y * (tile + pad)
        draw.multiline_text((pad, top + tile // 3), text, fill=(20, 20, 20))
        for x, pic in enumerate(pics):
            sheet.paste(pic.resize((tile, tile), Image.NEAREST), (label_w + x * (tile + pad), top))
    return sheet


def _figure(rel: str, caption: str) -> str:
    return f"<figure><img src='{rel}'><figcaption><small>{caption}</small></figcaption></figure>"


def _device_name() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"

