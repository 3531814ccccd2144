"""Masks of several qualities for one toy scene: what `bas fidelity --masks` hands the method, from a segmenter's
exact mask to a sloppy or misplaced one. The judge keeps scoring attention against the exact masks."""
from __future__ import annotations

import dataclasses

import numpy as np

from .world import DemoScene

#: the mask qualities `bas fidelity --masks` compares (sizes in pixels of the 64 px world; objects have radius
#: 7.5-11.5 px): what a user might hand the method, from a segmenter's clean mask to a sloppy or misplaced one
MASK_QUALITIES = {
    "exact": "the object's exact mask (as the paper's COCO evaluation)",
    "loose": "a human-like brush mask: the shape grown by 2-4.5 px, merged with a jittered ellipse (the default)",
    "dilated": "the exact mask grown by 4 px (a disc): generous, takes in background all round",
    "eroded": "the exact mask shrunk by 2 px (a disc): too tight, the object's rim is left out",
    "shifted": "the exact mask moved by 4 px in a random direction: misplaced, part background, part missed",
}


def _disc_offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if dy * dy + dx * dx <= radius * radius]


def _shift(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``m`` moved by (dy, dx) pixels; what leaves the frame is lost, what enters is empty."""
    out = np.zeros_like(m)
    h, w = m.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = m[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def perturbed_masks(demo: DemoScene, quality: str, seed: int = 0) -> list[np.ndarray]:
    """The masks of ``demo`` at one of MASK_QUALITIES (``shifted`` draws its directions from ``seed``)."""
    if quality not in MASK_QUALITIES:
        raise ValueError(f"mask quality {quality!r} is not one of {list(MASK_QUALITIES)}")
    exact = [np.asarray(m, bool) for m in demo.masks]
    if quality == "exact":
        return exact
    if quality == "loose":
        return list(demo.loose_masks)
    if quality == "dilated":
        return [np.logical_or.reduce([_shift(m, dy, dx) for dy, dx in _disc_offsets(4)]) for m in exact]
    if quality == "eroded":
        return [np.logical_and.reduce([_shift(m, dy, dx) for dy, dx in _disc_offsets(2)]) for m in exact]
    rng = np.random.default_rng([seed, 3511])
    angles = rng.uniform(0, 2 * np.pi, len(exact))
    return [_shift(m, int(round(4 * np.sin(a))), int(round(4 * np.cos(a)))) for m, a in zip(exact, angles)]


def with_masks(demo: DemoScene, quality: str, seed: int = 0) -> DemoScene:
    """A copy of ``demo`` whose user masks (the ones the method trains with) are of ``quality``; the exact masks,
    which the judge scores attention against, stay."""
    return dataclasses.replace(demo, loose_masks=perturbed_masks(demo, quality, seed))
