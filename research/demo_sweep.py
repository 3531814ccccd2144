"""Which training settings give the toy demo its best handles? ``bas demo``'s run under setting variants, one table.

Each variant is NAME:KEY=VALUE,KEY=VALUE with keys of ``TrainConfig`` (``phase1_lr=1e-3``, ``mode=full``, ...) plus
``guidance`` (sampling) and ``lr_factor`` (the phase-2 rates' multiple of the paper's, ``TOY_LR_FACTOR``). Every
variant trains on the same demo scene with the same seeds, so the rows differ only by their settings. Results are
kept per variant in OUT/NAME.json; a finished variant is skipped when the sweep runs again (resumable).

    python research/demo_sweep.py --model bas_toyworld/weights/toy_sd_v3 --out out/demo_sweep \\
        base: full:mode=full p1lr1e-3:phase1_lr=1e-3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bas_engine.fileio import atomic_write_text
from bas_toyworld.demo import DemoSettings, demo_cases
from bas_toyworld.extraction import extract_and_score, toy_config
from bas_toyworld.preview import save_grid
from bas_toyworld.worlds import get_world, model_world

COLUMNS = ("identity_alone", "identity_pair", "pair_both_exact", "pair_both_2of3", "identity_context",
           "prompt_fidelity", "leakage", "attention_iou")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """"name:k=v,k=v" -> (name, {k: v})."""
    name, _, rest = text.partition(":")
    pairs = [p.split("=", 1) for p in rest.split(",") if p]
    if not name or any(len(p) != 2 for p in pairs):
        raise SystemExit(f"variant {text!r}: expected NAME:KEY=VALUE,KEY=VALUE")
    return name, dict(pairs)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_variant(model: str, settings: DemoSettings, overrides: dict[str, str], sheet: Path | None = None) -> dict:
    """Train and score the demo scene with ``overrides``; the summary scores and the wall time (``sheet``: a PNG of
    the scene, then every generated image, a captioned row per prompt, written there)."""
    values = {k: _value(v) for k, v in overrides.items()}
    guidance = float(values.pop("guidance", settings.guidance))
    scene_seed = int(values.pop("scene", settings.scene_seed))
    values.setdefault("phase1_steps", settings.phase1_steps)
    values.setdefault("phase2_steps", settings.phase2_steps)
    values.setdefault("mode", settings.mode)
    config = toy_config(seed=settings.train_seed, **values)
    world = get_world(model_world(model))
    demo = world.make_demo_scene(scene_seed)
    cases = demo_cases(world, demo, settings)
    start = time.time()
    run = extract_and_score(demo, config, cases, settings.image_seeds, model_dir=model,
                            sample_steps=settings.sample_steps, guidance=guidance)
    alone = {r.case.prompt: r.mean("identity") for r in run.results if r.case.kind == "alone"}
    if sheet is not None:
        save_grid([[demo.image]] + [[i.image for i in r.images] for r in run.results], sheet,
                  labels=["scene"] + [r.case.prompt for r in run.results], scale=1)
    return {"scores": run.scores, "alone": alone, "seconds": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("variants", nargs="+", help="NAME:KEY=VALUE,... (NAME: alone is the demo's settings)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in a.variants:
        name, overrides = parse_variant(text)
        path = out / f"{name}.json"
        if not path.exists():
            result = run_variant(a.model, DemoSettings(), overrides, out / f"{name}.png")
            atomic_write_text(path, json.dumps({"overrides": overrides, **result}, indent=1))
        rows.append((name, json.loads(path.read_text())))
        print(f"{name}: " + " ".join(f"{k} {rows[-1][1]['scores'][k]:.3f}" for k in COLUMNS), flush=True)
    print("\n| variant | " + " | ".join(COLUMNS) + " | s |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for name, r in rows:
        print(f"| {name} {r['overrides']} | " + " | ".join(f"{r['scores'][k]:.3f}" for k in COLUMNS)
              + f" | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
