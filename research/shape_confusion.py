"""Which shape the judge reads in the base model's images, against the shape the caption asked for.

`bas toy-eval` gives one shape figure; this probe says where it is lost (a confusion table over the held-out
one-object captions of the model's world, the same captions, seed and sampler as toy-eval). Usage:
    python research/shape_confusion.py MODEL_DIR [--captions 48] [--guidance 4] [--threads 1] [--sheet PNG]
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch

from bas_toyworld.judge import detect
from bas_toyworld.model import load_pipeline
from bas_toyworld.preview import save_grid
from bas_toyworld.toy_eval import generate, heldout_cases
from bas_toyworld.world import render_scene
from bas_toyworld.worlds import model_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--captions", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sheet", help="also write a PNG: each row's world renders above the model's images")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    world = model_world(a.model)
    cases = heldout_cases(a.captions, a.seed, world)
    images = generate(load_pipeline(a.model), [c.caption for c in cases], a.seed, 30, a.guidance)
    if a.sheet:
        truth = [render_scene(c.spec)[0] for c in cases]
        rows = []
        for i in range(0, min(48, len(cases)), 8):
            rows += [truth[i:i + 8], images[i:i + 8]]
        save_grid(rows, a.sheet)
    table: Counter = Counter()
    for im, case in zip(images, cases):
        want = case.spec.objects[0].concept
        det = detect(im)
        best = max(det.objects, key=lambda o: (o.matches(want), int(o.mask.sum())), default=None)
        table[(want.shape, best.shape if best is not None else "-")] += 1
    asked = sorted({k[0] for k in table})
    read = sorted({k[1] for k in table})
    header = "asked/read"
    print(f"{header:<12}" + "".join(f"{r:>10}" for r in read))
    for s in asked:
        print(f"{s:<12}" + "".join(f"{table[(s, r)]:>10}" for r in read))


if __name__ == "__main__":
    main()
