"""Procedural picture world (v1): seeded scenes of textured shapes with exact masks and captions.

Pictures are 64x64 RGB. Every object is a (shape, colour, texture) "concept" drawn at one of two
sizes; later objects occlude earlier ones, and each returned mask holds an object's *visible*
pixels. This module samples scenes, writes their captions and builds the demo's scenes with loose,
human-like masks; the words and types are ``vocabulary``, the drawing is ``render`` (both re-exported here).

A fixed set of concepts, ``NOVEL_CONCEPTS``, never occurs in pretraining data
(``random_spec(allow_novel=False)``); the Break-A-Scene demo extracts those from one picture.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

# The vocabulary and the renderer live in their own modules; every name stays importable from here (the v1 world).
from .render import (  # noqa: F401
    CHECKER_CELL, DARK, DOT_PERIOD, DOT_RADIUS, SHAPE_EXTENTS, STRIPE_PERIOD, SUPERSAMPLE, render_scene,
    shape_coverage, shape_inside, texture_ink,
)
from .vocabulary import (  # noqa: F401
    BACKGROUND_PHRASES, BACKGROUNDS, COLOURS, IMAGE_SIZE, JOINERS, NOVEL_CONCEPTS, PREFIXES, SHAPES, SIZE_JITTER,
    SIZES, TEXTURES, Concept, DemoScene, ObjectSpec, Scene, SceneSpec, is_novel,
)


# --------------------------------------------------------------------------------------------
# sampling


ALL_CONCEPTS: tuple[Concept, ...] = tuple(
    Concept(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES
)
TRAIN_CONCEPTS: tuple[Concept, ...] = tuple(c for c in ALL_CONCEPTS if not is_novel(c))
DEFAULT_COUNT_WEIGHTS = (0.35, 0.3, 0.2, 0.15)  # P(1..4 objects); simple scenes teach binding faster
MIN_CENTRE_GAP = 0.85  # centre distance >= this * (r1 + r2): limited occlusion, masks stay large


def _place(rng: np.random.Generator, radii: list[float], size: int, gap: float, extra: float = 0.0,
           tries: int = 200) -> list[tuple[float, float]] | None:
    pts: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(tries):
            m = r + 1.0
            px, py = rng.uniform(m, size - m), rng.uniform(m, size - m)
            if all(math.hypot(px - qx, py - qy) >= gap * (r + qr) + extra for (qx, qy), qr in zip(pts, radii)):
                pts.append((float(px), float(py)))
                break
        else:
            return None
    return pts


def random_spec(rng: np.random.Generator, allow_novel: bool = False,
                count_weights: tuple[float, ...] = DEFAULT_COUNT_WEIGHTS,
                backgrounds: tuple[str, ...] | None = None) -> SceneSpec:
    """A random scene of 1..len(count_weights) objects with distinct colours.

    Distinct colours keep captions unambiguous and let the judge separate objects by colour.
    """
    w = np.asarray(count_weights, float)
    n = int(rng.choice(len(w), p=w / w.sum())) + 1
    pool = ALL_CONCEPTS if allow_novel else TRAIN_CONCEPTS
    while True:
        idx = rng.choice(len(pool), size=n, replace=False)
        concepts = [pool[i] for i in idx]
        if len({c.colour for c in concepts}) == n:
            break
    sizes = [str(rng.choice(list(SIZES))) for _ in range(n)]
    scales = [float(1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)) for _ in range(n)]
    while True:
        radii = [SIZES[s] * k for s, k in zip(sizes, scales)]
        pts = _place(rng, radii, IMAGE_SIZE, MIN_CENTRE_GAP)
        if pts is not None:
            break
        # Too crowded: shrink the largest object and try again (4 large objects rarely fit).
        big = [i for i, s in enumerate(sizes) if s == "large"]
        if big:
            sizes[big[0]] = "small"
        else:
            concepts, sizes, scales = concepts[:-1], sizes[:-1], scales[:-1]
    bgs = backgrounds or tuple(BACKGROUNDS)
    bg = str(bgs[int(rng.integers(len(bgs)))])
    objs = tuple(ObjectSpec(c.shape, c.colour, c.texture, s, x, y, k)
                 for c, s, k, (x, y) in zip(concepts, sizes, scales, pts))
    return SceneSpec(objs, bg)


def object_phrase(obj: ObjectSpec | Concept, size: str | None = None, solid_word: str | None = None) -> str:
    tex = obj.texture if obj.texture != "solid" else (solid_word or "")
    words = ["a", size or "", obj.colour, tex, obj.shape]
    return " ".join(w for w in words if w)


def caption(spec: SceneSpec, rng: np.random.Generator | None = None) -> str:
    """Caption from the grammar. Without rng: the canonical caption. With rng: a random paraphrase
    (style prefix, joiner, dropped size/background words) as used in pretraining, so that partial
    prompts like "a red ring" or "<asset0> on the beach" are in-distribution."""
    if rng is None:
        parts = [object_phrase(o, o.size) for o in spec.objects]
        return " and ".join(parts) + " " + BACKGROUND_PHRASES[spec.background]
    drop_size = rng.random() < 0.15
    parts = []
    for o in spec.objects:
        solid = str(rng.choice(["solid", "plain"])) if rng.random() < 0.3 else None
        parts.append(object_phrase(o, None if drop_size else o.size, solid))
    joiner = " and "
    if len(parts) == 2 and rng.random() < 0.4:
        joiner = f" {JOINERS[int(rng.integers(1, len(JOINERS)))]} "
    text = joiner.join(parts)
    if rng.random() < 0.9:
        text += " " + BACKGROUND_PHRASES[spec.background]
    if rng.random() < 0.3:
        text = f"{PREFIXES[int(rng.integers(len(PREFIXES)))]} {text}"
    return text


def make_scene(spec: SceneSpec) -> Scene:
    image, masks = render_scene(spec)
    return Scene(spec, image, masks, caption(spec))


def loose_mask(obj: ObjectSpec, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A sloppy, human-like mask: the object's full shape grown by a random margin and merged with
    a jittered ellipse around it (like a few quick brush strokes)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cov = shape_coverage(obj, size) > 0.3
    margin = rng.uniform(2.0, 4.5)
    ys, xs = np.nonzero(cov)
    # Distance to the shape via max over its pixels is cheap at 64x64 with a strided subset.
    d2 = np.full((size, size), np.inf)
    for py, px in zip(ys[::2] + 0.5, xs[::2] + 0.5):
        np.minimum(d2, (xx - px) ** 2 + (yy - py) ** 2, out=d2)
    grown = d2 <= margin**2
    r = obj.radius * rng.uniform(1.15, 1.45)
    ax, ay = r * rng.uniform(0.9, 1.2), r * rng.uniform(0.9, 1.2)
    cx, cy = obj.x + rng.uniform(-1.5, 1.5), obj.y + rng.uniform(-1.5, 1.5)
    ellipse = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
    return grown | ellipse


def make_demo_scene(seed: int = 0) -> DemoScene:
    """Three novel concepts (large, not overlapping) on a random background, plus loose masks."""
    rng = np.random.default_rng([seed, 1007])
    picks = rng.choice(len(NOVEL_CONCEPTS), size=3, replace=False)
    return _extraction_scene(rng, [NOVEL_CONCEPTS[i] for i in picks], "large")


#: most concepts one scene can hold: a scene's concepts need distinct colours (the judge tells them apart by colour)
MAX_CONCEPTS = len(COLOURS)
#: object size of the concept-count sweep's scenes, the same for every count so that counts compare: 8 large objects
#: (radius 11.5 px) do not fit in 64 px (5 at most), 8 small ones (7.5 px) do
SWEEP_OBJECT_SIZE = "small"


def make_concept_scene(seed: int, n_concepts: int) -> DemoScene:
    """A scene of ``n_concepts`` small concepts with loose masks, for ``bas fidelity --concepts``.

    Up to 6 the concepts are novel (``NOVEL_CONCEPTS``, a random subset); beyond, the two colours the novel
    concepts leave (red, blue) get a random shape and texture: pretraining combinations, the only way to have
    7 or 8 concepts of distinct colours.
    """
    if not 1 <= n_concepts <= MAX_CONCEPTS:
        raise ValueError(f"n_concepts must be 1..{MAX_CONCEPTS}, got {n_concepts}")
    rng = np.random.default_rng([seed, n_concepts, 4441])
    order = rng.permutation(len(NOVEL_CONCEPTS))
    concepts = [NOVEL_CONCEPTS[i] for i in order[:n_concepts]]
    spare_colours = [c for c in COLOURS if c not in {n.colour for n in NOVEL_CONCEPTS}]
    for colour in spare_colours[:n_concepts - len(concepts)]:
        concepts.append(Concept(SHAPES[int(rng.integers(len(SHAPES)))], colour,
                                TEXTURES[int(rng.integers(len(TEXTURES)))]))
    return _extraction_scene(rng, concepts, SWEEP_OBJECT_SIZE)


def _extraction_scene(rng: np.random.Generator, concepts: list[Concept], size: str) -> DemoScene:
    """Place ``concepts`` (not overlapping, 2 px apart) on a random background and paint each a loose mask
    that keeps off the others."""
    scales = [float(1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)) for _ in concepts]
    radii = [SIZES[size] * k for k in scales]
    pts = None
    while pts is None:
        pts = _place(rng, radii, IMAGE_SIZE, 1.0, extra=2.0, tries=500)
    bg = str(list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))])
    objs = tuple(ObjectSpec(c.shape, c.colour, c.texture, size, x, y, k)
                 for c, k, (x, y) in zip(concepts, scales, pts))
    spec = SceneSpec(objs, bg)
    image, masks = render_scene(spec)
    loose = []
    for i, o in enumerate(objs):
        m = loose_mask(o, rng)
        for j, other in enumerate(masks):
            if j != i:  # a person painting object i avoids the other objects
                m &= ~dilate4(other)
        loose.append(m)
    return DemoScene(spec, image, masks, caption(spec), loose_masks=loose, concepts=list(concepts))


def make_heldout_scenes(n: int, seed: int = 0, allow_novel: bool = False) -> list[Scene]:
    """n evaluation scenes from a random stream separate from the pretraining stream."""
    rng = np.random.default_rng([seed, 2029])
    return [make_scene(random_spec(rng, allow_novel=allow_novel)) for _ in range(n)]


def dilate4(m: np.ndarray) -> np.ndarray:
    """Grow a boolean mask by one pixel in the four axis directions."""
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def save_scene_dir(scene: Scene, path: str | Path, loose: bool = True) -> Path:
    """Write img.png + mask{i}.png (+ spec.json) in the layout bas_engine.scene.load_scene_dir reads.
    For a DemoScene the loose masks are written (the engine's real use case) unless loose=False."""
    from PIL import Image

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(p / "img.png")
    masks = scene.loose_masks if (loose and isinstance(scene, DemoScene)) else scene.masks
    for i, m in enumerate(masks):
        Image.fromarray((m * 255).astype(np.uint8)).save(p / f"mask{i}.png")
    meta = {"spec": scene.spec.to_json(), "caption": scene.caption}
    if isinstance(scene, DemoScene):
        meta["concepts"] = [asdict(c) for c in scene.concepts]
    (p / "spec.json").write_text(json.dumps(meta, indent=1))
    return p


def degrade(image: np.ndarray, rng: np.random.Generator, noise: float = 0.0, blur: float = 0.0) -> np.ndarray:
    """Gaussian blur (sigma in px) then additive Gaussian noise (sigma in 0..255 units)."""
    img = image.astype(np.float32)
    if blur > 0:
        img = gaussian_blur(img, blur)
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    rad = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(rad, rad), (rad, rad)] + [(0, 0)] * (img.ndim - 2)
    a = np.pad(img.astype(np.float32), pad, mode="edge")
    h, w = img.shape[:2]
    a = sum(k[i] * a[i:i + h] for i in range(len(k)))
    a = sum(k[i] * a[:, i:i + w] for i in range(len(k)))
    return a


__all__ = [
    "IMAGE_SIZE", "SHAPES", "COLOURS", "TEXTURES", "SIZES", "BACKGROUNDS", "BACKGROUND_PHRASES",
    "NOVEL_CONCEPTS", "Concept", "ObjectSpec", "SceneSpec", "Scene", "DemoScene", "render_scene",
    "random_spec", "caption", "make_scene", "make_demo_scene", "make_concept_scene", "MAX_CONCEPTS", "make_heldout_scenes", "is_novel",
    "save_scene_dir", "degrade", "shape_coverage",
]
