"""``bas fidelity``: the method and its ablations over held-out toy scenes and seeds, as a table.

Every (variant, scene, seed) run trains a pack with the engine on a scene of three novel concepts
with loose masks, generates each concept alone, every pair and each concept in a new context, and
scores the images with the judge. The table gives mean ± 95 % interval (Student t over runs).
Two sweeps repeat the runs along one more axis, each with a table row and a plot per value: the number
of concepts in the scene (``concepts``) and the quality of the masks given to the method (``masks``).
Finished runs are kept in ``OUT/runs/*.json``: an interrupted benchmark resumes where it stopped.
"""
from __future__ import annotations

import itertools
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
#: what a record without the field meant (records from before the sweeps had neither)
RECORD_DEFAULTS = {"masks": "loose", "concepts": None}
#: pair prompts per run at most: 8 concepts have 28 pairs, a fixed sample of 6 keeps a run's cost near 4 concepts'
MAX_PAIRS = 6


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
    masks: tuple[str, ...] = ("loose",)          # mask_quality.MASK_QUALITIES: the masks the method is given
    # concept-count sweep: scenes of this many concepts (the model's world's make_concept_scene: v1's are small);
    # () = the standard scenes (make_demo_scene: three large novel concepts)
    concepts: tuple[int, ...] = ()


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


def run_name(variant: str, masks: str, scene_seed: int, train_seed: int, concepts: int | None = None) -> str:
    """A run's record name (runs of the standard scenes with the default loose masks keep the name they had before
    the sweeps)."""
    quality = "" if masks == "loose" else f"_masks-{masks}"
    count = "" if concepts is None else f"_concepts-{concepts}"
    return f"{variant}{count}{quality}_scene{scene_seed}_seed{train_seed}"


def record_field(record: dict, key: str):
    """A run record's ``key``, with the value older records meant by leaving it out."""
    return record.get(key, RECORD_DEFAULTS.get(key))


def fidelity_scene(scene_seed: int, masks: str, concepts: int | None = None, world: str = "v1"):
    """The scene one run trains on: the standard scene of ``world`` (or its scene of ``concepts`` concepts) with
    masks of quality ``masks``."""
    from .mask_quality import with_masks
    from .worlds import get_world

    w = get_world(world)
    scene = w.make_demo_scene(scene_seed) if concepts is None else w.make_concept_scene(scene_seed, concepts)
    return with_masks(scene, masks, seed=scene_seed)


def run_one(job: tuple[str, str, int | None, int, int, dict]) -> dict:
    """Train, generate and score one (variant, mask quality, concept count, scene, seed); runs in a worker
    process."""
    import torch

    from .extraction import DEFAULT_MODEL, extract_and_score, prompt_cases
    from .worlds import get_world, model_world

    variant, masks, concepts, scene_seed, train_seed, raw = job
    settings = FidelitySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    torch.set_num_threads(int(os.environ.get("BAS_FIDELITY_THREADS", "1")))
    t0 = time.time()
    world = model_world(settings.model_dir or DEFAULT_MODEL)
    demo = fidelity_scene(scene_seed, masks, concepts, world)
    cases = prompt_cases(len(demo.concepts), demo.spec.background, contexts_per_concept=1, max_pairs=MAX_PAIRS,
                         seed=scene_seed, backgrounds=get_world(world).backgrounds)
    run = extract_and_score(demo, variant_config(variant, settings, train_seed), cases, settings.image_seeds,
                            model_dir=settings.model_dir, sample_steps=settings.sample_steps,
                            guidance=settings.guidance, preview_every=10)
    results, ious, scores = run.results, run.ious, run.scores
    # Per-image verdicts too, so a new summary score can be computed from the records without rerunning.
    images = [{"kind": r.case.kind, "prompt": r.case.prompt, "seed": i.seed, "identities": list(i.identities),
               "leakage": i.leakage, "leakage_2of3": i.leakage_partial, "fidelity": i.fidelity}
              for r in results for i in r.images]
    return {"variant": variant, "masks": masks, "concepts": concepts, "scene_seed": scene_seed,
            "train_seed": train_seed, "scores": scores,
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


def table(records: Sequence[dict], variants: Sequence[str], masks: Sequence[str] = ("loose",),
          concepts: Sequence[int] = ()) -> str:
    """Markdown table: one row per variant, concept count (in a concept sweep) and mask quality (when more than
    one), mean ± 95 % CI per score, n runs."""
    by_count, by_mask = bool(concepts), len(masks) > 1
    head = ("| variant | " + ("concepts | " if by_count else "") + ("masks | " if by_mask else "") + "n | "
            + " | ".join(SCORES) + " |")
    lines = [head, "|" + "---|" * (len(SCORES) + 2 + by_count + by_mask)]
    for name, count, quality in itertools.product(variants, tuple(concepts) or (None,), masks):
        rows = [r for r in records if r["variant"] == name and record_field(r, "masks") == quality
                and record_field(r, "concepts") == count]
        if not rows:
            continue
        cells = []
        for score in SCORES:
            m, h = mean_ci([r["scores"][score] for r in rows])
            cells.append("–" if math.isnan(m) else f"{m:.3f} ± {h:.3f}" if not math.isnan(h) else f"{m:.3f}")
        label = " | ".join([name] + ([str(count)] if by_count else []) + ([quality] if by_mask else []))
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_settings(settings: FidelitySettings) -> None:
    """ValueError naming the setting and the bad value, for the Python API (the CLI checks its flags first)."""
    from .extraction import DEFAULT_MODEL
    from .mask_quality import MASK_QUALITIES
    from .worlds import get_world, model_world

    world = get_world(model_world(settings.model_dir or DEFAULT_MODEL))
    for name in settings.variants:
        if name not in VARIANTS:
            raise ValueError(f"variants: {name!r} is not one of {list(VARIANTS)}")
    for quality in settings.masks:
        if quality not in MASK_QUALITIES:
            raise ValueError(f"masks: {quality!r} is not one of {list(MASK_QUALITIES)}")
    for count in settings.concepts:
        if not (isinstance(count, int) and 1 <= count <= world.max_concepts):
            raise ValueError(f"concepts: {count!r} is not a whole number from 1 to {world.max_concepts} (the most "
                             f"the model's world {world.name} puts in one scene)")


def run_fidelity(out_dir: str | Path, settings: FidelitySettings | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Run every (variant, concept count, mask quality, scene, seed) not already in OUT/runs, then write table.md,
    results.json and, for a sweep, its plot (concepts.png, masks.png)."""
    from bas_engine.fileio import atomic_write_text

    from .mask_quality import MASK_QUALITIES

    settings = settings or FidelitySettings()
    check_settings(settings)
    out = Path(out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    raw = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()}
    settings_key = {k: raw[k] for k in ("phase1_steps", "phase2_steps", "image_seeds", "sample_steps", "guidance",
                                        "model_dir")}
    settings_key["scores"] = list(SCORES)  # records made with other scores are run again
    jobs, records = [], []
    for variant, count, quality, scene_seed, train_seed in itertools.product(
            settings.variants, settings.concepts or (None,), settings.masks, settings.scene_seeds,
            settings.train_seeds):
        path = runs_dir / f"{run_name(variant, quality, scene_seed, train_seed, count)}.json"
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("settings") == settings_key:
                records.append(record)
                continue
        jobs.append((variant, quality, count, scene_seed, train_seed, raw))
    log(f"{len(records)} runs already done, {len(jobs)} to run with {settings.workers} worker(s)")
    t0 = time.time()
    total = len(records) + len(jobs)

    def keep(record: dict) -> None:
        record["settings"] = settings_key
        name = run_name(record["variant"], record["masks"], record["scene_seed"], record["train_seed"],
                        record["concepts"])
        atomic_write_text(runs_dir / f"{name}.json", json.dumps(record, indent=1))
        records.append(record)
        s = record["scores"]
        count = "" if record["concepts"] is None else f" {record['concepts']} concepts"
        quality = "" if record["masks"] == "loose" else f" masks {record['masks']}"
        log(f"  [{len(records)}/{total}] {record['variant']}{count}{quality} scene {record['scene_seed']} "
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
    wall_min = (time.time() - t0) / 60
    run_min = sum(r["seconds"] for r in records) / 60
    text = table(records, settings.variants, settings.masks, settings.concepts)
    plots = sweep_plots(out, records, settings)
    notes = "\n".join(f"- **{name}**: {VARIANTS[name][1]}" for name in settings.variants)
    notes += "\n\n## Masks given to the method\n" + "\n".join(
        f"- **{quality}**: {MASK_QUALITIES[quality]}" for quality in settings.masks)
    legend = "\n".join(f"- `{k}`: {v}" for k, v in SCORE_HELP.items())
    scenes = ("standard scenes (three large novel concepts)" if not settings.concepts else
              f"scenes of {', '.join(map(str, settings.concepts))} small concepts (at most {MAX_PAIRS} pairs each)")
    pictures = "".join(f"\n\n![{p.stem}]({p.name})" for p in plots)
    doc = (f"# bas fidelity\n\nScenes {list(settings.scene_seeds)} × training seeds {list(settings.train_seeds)}, "
           f"{scenes}; phase 1 {settings.phase1_steps} + phase 2 {settings.phase2_steps} steps; images per prompt: "
           f"{len(settings.image_seeds)}; mean ± 95 % interval over runs. Wall time of this invocation: "
           f"{wall_min:.1f} min for {len(jobs)} runs with {settings.workers} worker(s); all {len(records)} runs' "
           f"own time: {run_min:.1f} min.\n\n{text}{pictures}\n\n## Variants\n{notes}\n\n## Scores\n{legend}\n")
    atomic_write_text(out / "table.md", doc)
    atomic_write_text(out / "results.json", json.dumps({"settings": raw, "records": records, "wall_minutes":
                                                        round(wall_min, 2), "runs_run": len(jobs)}, indent=1))
    log(text)
    log(f"wrote {out / 'table.md'}" + "".join(f", {p}" for p in plots)
        + f" ({wall_min:.1f} min of wall time for {len(jobs)} runs; all runs' own time {run_min:.1f} min)")
    return {"records": records, "table": text, "plots": [str(p) for p in plots], "wall_minutes": wall_min}


def sweep_plots(out: Path, records: Sequence[dict], settings: FidelitySettings) -> list[Path]:
    """One PNG per sweep with more than one value (concepts.png, masks.png): each variant's scores along it."""
    from .plots import sweep_plot

    sweeps = {"concepts": tuple(settings.concepts), "masks": tuple(settings.masks)}
    paths = []
    for axis, values in sweeps.items():
        if len(values) < 2:
            continue
        other = "masks" if axis == "concepts" else "concepts"
        others = sweeps[other] or (None,)  # no concept sweep: the standard scenes (records without a count)
        series = [(variant if len(others) == 1 else f"{variant}, {other} {value}", {"variant": variant, other: value})
                  for variant, value in itertools.product(settings.variants, others)]
        title = (f"bas fidelity: scores against the {'number of concepts' if axis == 'concepts' else 'mask quality'}"
                 f" (mean ± 95 % interval over {len(settings.scene_seeds) * len(settings.train_seeds)} runs)")
        paths.append(sweep_plot(records, axis, values, series, out / f"{axis}.png", title))
    return paths
