"""``bas fidelity``: the method and its ablations over held-out toy scenes and seeds, as a table.

Every (variant, scene, seed) run trains a pack with the engine on a scene of three novel concepts
with loose masks, generates each concept alone, every pair and each concept in a new context, and
scores the images with the judge. The table gives mean ± 95 % interval (Student t over runs).
Finished runs are kept in ``OUT/runs/*.json``: an interrupted benchmark resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .extraction import SCORE_HELP

# name -> (TrainConfig overrides, what the paper predicts against "method")
VARIANTS: dict[str, tuple[dict, str]] = {
    "method": ({}, "the full method (LoRA in phase 2, as this engine's default)"),
    "no_phase1": ({"joint": True},
                  "one joint phase from the start (same total steps, handles at the phase-1 rate): "
                  "the paper expects lower editability (prompt fidelity)"),
    "no_masked_loss": ({"masked_loss": False}, "plain diffusion loss: background leaks into the handles"),
    "no_attention_loss": ({"attention_loss_weight": 0.0}, "expected: more leakage, lower attention IoU"),
    "no_union_sampling": ({"union_sampling": False}, "all concepts every step: expected worse single/pair use"),
    "full_finetune": ({"mode": "full"}, "full fine-tuning of the UNet in phase 2 (the paper's setting)"),
}
SCORES = tuple(SCORE_HELP)
LOWER_IS_BETTER = {"leakage", "leakage_2of3"}


@dataclass
class FidelitySettings:
    variants: tuple[str, ...] = tuple(VARIANTS)
    scene_seeds: tuple[int, ...] = (1, 2, 3)     # scene 0 is the demo's; these are held out from it
    train_seeds: tuple[int, ...] = (0, 1)
    phase1_steps: int = 400
    phase2_steps: int = 400
    image_seeds: tuple[int, ...] = (0, 1)
    sample_steps: int = 25
    guidance: float = 5.0
    workers: int = 2
    model_dir: str | None = None
    masks: tuple[str, ...] = ("loose",)          # world.MASK_QUALITIES: the masks the method is given


def variant_config(name: str, settings: FidelitySettings, train_seed: int):
    """The toy TrainConfig of one variant (see VARIANTS)."""
    from bas_engine.config import TrainConfig

    from .extraction import toy_config

    if name not in VARIANTS:
        raise ValueError(f"variant {name!r} is not one of {list(VARIANTS)}")
    overrides = dict(VARIANTS[name][0])
    steps = {"phase1_steps": settings.phase1_steps, "phase2_steps": settings.phase2_steps}
    if overrides.pop("joint", False):
        # Same step budget in one phase; the handles must learn there at the phase-1 rate.
        steps = {"phase1_steps": 0, "phase2_steps": settings.phase1_steps + settings.phase2_steps,
                 "phase2_handle_lr": TrainConfig().phase1_lr}
    return toy_config(seed=train_seed, **steps, **overrides)


def run_name(variant: str, masks: str, scene_seed: int, train_seed: int) -> str:
    """A run's record name (runs with the default loose masks keep the name they had before mask sweeps)."""
    quality = "" if masks == "loose" else f"_masks-{masks}"
    return f"{variant}{quality}_scene{scene_seed}_seed{train_seed}"


def run_one(job: tuple[str, str, int, int, dict]) -> dict:
    """Train, generate and score one (variant, mask quality, scene, seed); runs in a worker process."""
    import torch

    from .extraction import extract_and_score, prompt_cases
    from .world import make_demo_scene, with_masks

    variant, masks, scene_seed, train_seed, raw = job
    settings = FidelitySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    torch.set_num_threads(int(os.environ.get("BAS_FIDELITY_THREADS", "1")))
    t0 = time.time()
    demo = with_masks(make_demo_scene(scene_seed), masks, seed=scene_seed)
    cases = prompt_cases(len(demo.concepts), demo.spec.background, contexts_per_concept=1)
    run = extract_and_score(demo, variant_config(variant, settings, train_seed), cases, settings.image_seeds,
                            model_dir=settings.model_dir, sample_steps=settings.sample_steps,
                            guidance=settings.guidance, preview_every=10)
    results, ious, scores = run.results, run.ious, run.scores
    # Per-image verdicts too, so a new summary score can be computed from the records without rerunning.
    images = [{"kind": r.case.kind, "prompt": r.case.prompt, "seed": i.seed, "identities": list(i.identities),
               "leakage": i.leakage, "leakage_2of3": i.leakage_partial, "fidelity": i.fidelity}
              for r in results for i in r.images]
    return {"variant": variant, "masks": masks, "scene_seed": scene_seed, "train_seed": train_seed, "scores": scores,
            "attention_iou_per_handle": ious, "images": images, "seconds": round(time.time() - t0, 1)}


def t_critical_95(df: int) -> float:
    """Two-sided 95 % Student t quantile (table; normal beyond 30 degrees of freedom)."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
             2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
             2.045, 2.042]
    return table[df - 1] if 1 <= df <= len(table) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % interval (NaN half-width for a single value)."""
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(t_critical_95(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def table(records: Sequence[dict], variants: Sequence[str], masks: Sequence[str] = ("loose",)) -> str:
    """Markdown table: one row per variant (and mask quality, when more than one), mean ± 95 % CI per score,
    n runs."""
    by_mask = len(masks) > 1
    head = "| variant | " + ("masks | " if by_mask else "") + "n | " + " | ".join(SCORES) + " |"
    lines = [head, "|" + "---|" * (len(SCORES) + 2 + by_mask)]
    for name, quality in [(v, m) for v in variants for m in masks]:
        rows = [r for r in records if r["variant"] == name and r.get("masks", "loose") == quality]
        if not rows:
            continue
        cells = []
        for score in SCORES:
            m, h = mean_ci([r["scores"][score] for r in rows])
            cells.append(f"{m:.3f} ± {h:.3f}" if not math.isnan(h) else f"{m:.3f}")
        label = f"{name} | {quality}" if by_mask else name
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_fidelity(out_dir: str | Path, settings: FidelitySettings | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Run every (variant, scene, seed) not already in OUT/runs, then write table.md and results.json."""
    from bas_engine.fileio import atomic_write_text

    from .world import MASK_QUALITIES

    settings = settings or FidelitySettings()
    for name in settings.variants:
        if name not in VARIANTS:
            raise ValueError(f"variants: {name!r} is not one of {list(VARIANTS)}")
    for quality in settings.masks:
        if quality not in MASK_QUALITIES:
            raise ValueError(f"masks: {quality!r} is not one of {list(MASK_QUALITIES)}")
    out = Path(out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    raw = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()}
    settings_key = {k: raw[k] for k in ("phase1_steps", "phase2_steps", "image_seeds", "sample_steps", "guidance",
                                        "model_dir")}
    settings_key["scores"] = list(SCORES)  # records made with other scores are run again
    jobs, records = [], []
    for variant in settings.variants:
        for quality in settings.masks:
            for scene_seed in settings.scene_seeds:
                for train_seed in settings.train_seeds:
                    path = runs_dir / f"{run_name(variant, quality, scene_seed, train_seed)}.json"
                    if path.exists():
                        record = json.loads(path.read_text())
                        if record.get("settings") == settings_key:
                            records.append(record)
                            continue
                    jobs.append((variant, quality, scene_seed, train_seed, raw))
    log(f"{len(records)} runs already done, {len(jobs)} to run with {settings.workers} worker(s)")
    t0 = time.time()
    total = len(records) + len(jobs)

    def keep(record: dict) -> None:
        record["settings"] = settings_key
        path = runs_dir / f"{run_name(record['variant'], record['masks'], record['scene_seed'], record['train_seed'])}.json"
        atomic_write_text(path, json.dumps(record, indent=1))
        records.append(record)
        s = record["scores"]
        quality = "" if record["masks"] == "loose" else f" masks {record['masks']}"
        log(f"  [{len(records)}/{total}] {record['variant']}{quality} scene {record['scene_seed']} "
            f"seed {record['train_seed']}: " + " ".join(f"{k} {s[k]:.2f}" for k in SCORES)
            + f" ({record['seconds']:.0f} s)")

    if settings.workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(settings.workers)
        try:
            for record in pool.imap_unordered(run_one, jobs):
                keep(record)
            pool.close()  # let the workers exit on their own (terminate() leaks their semaphores)
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    else:
        for job in jobs:
            keep(run_one(job))
    text = table(records, settings.variants, settings.masks)
    notes = "\n".join(f"- **{name}**: {VARIANTS[name][1]}" for name in settings.variants)
    notes += "\n\n## Masks given to the method\n" + "\n".join(
        f"- **{quality}**: {MASK_QUALITIES[quality]}" for quality in settings.masks)
    legend = "\n".join(f"- `{k}`: {v}" for k, v in SCORE_HELP.items())
    doc = (f"# bas fidelity\n\nScenes {list(settings.scene_seeds)} × training seeds {list(settings.train_seeds)}; "
           f"phase 1 {settings.phase1_steps} + phase 2 {settings.phase2_steps} steps; images per prompt: "
           f"{len(settings.image_seeds)}; mean ± 95 % interval over runs.\n\n{text}\n\n## Variants\n{notes}\n\n"
           f"## Scores\n{legend}\n")
    atomic_write_text(out / "table.md", doc)
    atomic_write_text(out / "results.json", json.dumps({"settings": raw, "records": records}, indent=1))
    log(text)
    log(f"wrote {out / 'table.md'} ({(time.time() - t0) / 60:.1f} min of wall time for {len(jobs)} runs)")
    return {"records": records, "table": text}
