"""Which shape the judge reads in the base model's images, against the shape the caption asked for.

`bas toy-eval` gives one shape figure; this probe says where it is lost: a confusion table over the held-out
one-object captions of the model's world (toy-eval's captions, seed and sampler), "-" where the judge finds no
object. Usage:
    python research/shape_confusion.py MODEL_DIR [--captions 48] [--guidance 4] [--threads 1] [--sheet PNG]
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch

from bas_toyworld.judge import detect
from bas_toyworld.model import load_pipeline
from bas_toyworld.preview import save_grid
from bas_toyworld.toy_eval import generate, heldout_cases, scored_object
from bas_toyworld.world import render_scene
from bas_toyworld.worlds import model_world

NO_OBJECT = "-"


def shape_confusion(model_dir: str, captions: int = 48, seed: int = 0, steps: int = 30, guidance: float = 4.0,
                    sheet: str | None = None) -> Counter:
    """Counts of (asked shape, shape the judge reads in the object toy-eval would score) over ``captions``
    held-out captions; ``sheet``: a PNG with each row of world renders above the model's images."""
    cases = heldout_cases(captions, seed, model_world(model_dir))
    images = generate(load_pipeline(model_dir), [c.caption for c in cases], seed, steps, guidance)
    if sheet:
        truth = [render_scene(c.spec)[0] for c in cases]
        rows = []
        for i in range(0, min(48, len(cases)), 8):
            rows += [truth[i:i + 8], images[i:i + 8]]
        save_grid(rows, sheet)
    table: Counter = Counter()
    for image, case in zip(images, cases):
        best = scored_object(detect(image), case.spec)  # the object toy-eval's verdicts are about
        table[(case.spec.objects[0].shape, best.shape if best is not None else NO_OBJECT)] += 1
    return table


def format_confusion(table: Counter) -> str:
    """Rows: asked shapes; columns: shapes read."""
    asked = sorted({k[0] for k in table})
    read = sorted({k[1] for k in table})
    header = "asked/read"
    lines = [f"{header:<12}" + "".join(f"{r:>10}" for r in read) + f"{'right':>8}"]
    for s in asked:
        total = sum(table[(s, r)] for r in read)
        lines.append(f"{s:<12}" + "".join(f"{table[(s, r)]:>10}" for r in read) + f"{table[(s, s)] / total:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--captions", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sheet", help="also write a PNG: each row of world renders above the model's images")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(format_confusion(shape_confusion(a.model, a.captions, a.seed, guidance=a.guidance, sheet=a.sheet)))


if __name__ == "__main__":
    main()
