"""Toy world v3 (issue 22): the v1 world shrunk until a CPU-trained model can draw it.

v1's world (six shapes, four textures, two sizes, six backgrounds, 1-4 objects) was too much for the models that
an hour or a few of this 2-core CPU trains: shape stayed at chance in every v1/v2 run, and only in a narrowed world
(one large solid object on white) did the shape word start to count (``weights/PRETRAIN_V2.md``). v3 keeps what
carries over unchanged — 64 px pictures, the renderer, the eight colours, the caption grammar, the judge and v1's
VAE, which already reconstructs this subset of its world — and keeps only:

* four shapes that differ strongly: circle (a disc), square, triangle, cross (v1's star and ring are gone: a small
  blurred star reads as a circle, a ring as a circle with a hole);
* two textures: solid and striped (the pattern with the largest features);
* one size, v1's "large" (radius 11.5 px ±6 %, above 1/6 of the picture), so captions carry no size word;
* four backgrounds: the two plain ones (white, gray) and two of v1's patterned ones (beach, night), for the demo's
  new-context prompts;
* 1-4 objects (50/25/15/10 %), distinct colours per scene, as in v1.

Identity still takes more than colour: each colour comes in 4 shapes x 2 textures. ``STAGES`` are the sub-worlds
of the pretraining curriculum, from the narrowed world (one solid object on white) outwards.

Scenes are v1 ``SceneSpec`` values (``world.render_scene`` draws them), so everything that takes a v1 scene takes a
v3 one; ``world.py`` and the v1 world are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .world import (
    BACKGROUND_PHRASES, COLOURS, IMAGE_SIZE, JOINERS, MIN_CENTRE_GAP, PREFIXES, SIZE_JITTER, SIZES, Concept,
    DemoScene, ObjectSpec, Scene, SceneSpec, _extraction_scene, _place, render_scene,
)

NAME = "v3"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
TEXTURES: tuple[str, ...] = ("solid", "striped")
SIZE = "large"
PLAIN_BACKGROUNDS: tuple[str, ...] = ("white", "gray")
BACKGROUNDS: tuple[str, ...] = PLAIN_BACKGROUNDS + ("beach", "night")
COUNT_WEIGHTS: tuple[float, ...] = (0.5, 0.25, 0.15, 0.1)  # P(1..4 objects); toy-eval asks for one
#: concepts one extraction scene holds (``make_concept_scene``): as many objects as pretraining's scenes
MAX_CONCEPTS = len(COUNT_WEIGHTS)

# Combinations pretraining never shows (every attribute of them is common); distinct shapes and colours, so any
# three of them fit one demo scene and the judge tells them apart by colour.
NOVEL_CONCEPTS: tuple[Concept, ...] = (
    Concept("cross", "pink", "striped"),
    Concept("triangle", "cyan", "striped"),
    Concept("square", "orange", "solid"),
    Concept("circle", "purple", "striped"),
)
_NOVEL_SET = frozenset(NOVEL_CONCEPTS)
ALL_CONCEPTS: tuple[Concept, ...] = tuple(Concept(s, c, t) for s in SHAPES for c in COLOUR_NAMES for t in TEXTURES)
TRAIN_CONCEPTS: tuple[Concept, ...] = tuple(c for c in ALL_CONCEPTS if c not in _NOVEL_SET)


def is_novel(concept: Concept) -> bool:
    """Whether ``concept`` is one of v3's held-out combinations."""
    return concept in _NOVEL_SET


@dataclass(frozen=True)
class Stage:
    """A sub-world of v3 for the pretraining curriculum: which textures, backgrounds and object counts occur."""

    name: str
    textures: tuple[str, ...]
    backgrounds: tuple[str, ...]
    count_weights: tuple[float, ...]


#: the curriculum's sub-worlds, narrowest first; the last is the whole v3 world. The first is the world in which
#: the v2 measurements saw the shape word start to count within 150 steps (one large solid object on white).
STAGES: tuple[Stage, ...] = (
    Stage("narrow", ("solid",), ("white",), (1.0,)),
    Stage("textures", TEXTURES, PLAIN_BACKGROUNDS, (1.0,)),
    Stage("backgrounds", TEXTURES, BACKGROUNDS, (0.75, 0.25)),
    Stage("full", TEXTURES, BACKGROUNDS, COUNT_WEIGHTS),
)
FULL = STAGES[-1]
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    """The curriculum stage called ``name`` (a clear error for any other name)."""
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"unknown v3 stage {name!r}; one of {list(STAGE_NAMES)}")


def random_spec(rng: np.random.Generator, allow_novel: bool = False,
                count_weights: tuple[float, ...] | None = None, within: Stage = FULL) -> SceneSpec:
    """A random v3 scene of ``within``'s kind: 1..k large objects of distinct colours (``count_weights`` overrides
    the stage's P(1..k objects)). Four large objects always fit in 64 px (placement retries; an object is dropped
    only if 200 tries of every kind fail, which the tests never see)."""
    w = np.asarray(count_weights or within.count_weights, float)
    n = int(rng.choice(len(w), p=w / w.sum())) + 1
    pool = [c for c in (ALL_CONCEPTS if allow_novel else TRAIN_CONCEPTS) if c.texture in within.textures]
    while True:
        idx = rng.choice(len(pool), size=n, replace=False)
        concepts = [pool[i] for i in idx]
        if len({c.colour for c in concepts}) == n:
            break
    scales = [float(1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)) for _ in range(n)]
    pts = None
    for _ in range(20):
        pts = _place(rng, [SIZES[SIZE] * k for k in scales], IMAGE_SIZE, MIN_CENTRE_GAP)
        if pts is not None:
            break
    while pts is None:  # practically unreachable: keep the scene valid rather than loop forever
        concepts, scales = concepts[:-1], scales[:-1]
        pts = _place(rng, [SIZES[SIZE] * k for k in scales], IMAGE_SIZE, MIN_CENTRE_GAP)
    bg = within.backgrounds[int(rng.integers(len(within.backgrounds)))]
    objs = tuple(ObjectSpec(c.shape, c.colour, c.texture, SIZE, x, y, k)
                 for c, k, (x, y) in zip(concepts, scales, pts))
    return SceneSpec(objs, bg)


def object_phrase(obj: ObjectSpec | Concept, solid_word: str | None = None) -> str:
    """"a red striped square" ("a red square" for solid, or "a red solid/plain square" with ``solid_word``)."""
    tex = obj.texture if obj.texture != "solid" else (solid_word or "")
    return " ".join(w for w in ("a", obj.colour, tex, obj.shape) if w)


def caption(spec: SceneSpec, rng: np.random.Generator | None = None) -> str:
    """v3 caption: v1's grammar without the size word (v3 has one size). Without rng the canonical caption
    ("a red striped square and a blue circle on the beach"); with rng a paraphrase as pretraining uses (style
    prefix, joiner, "solid"/"plain", the background phrase dropped now and then)."""
    if rng is None:
        return " and ".join(object_phrase(o) for o in spec.objects) + " " + BACKGROUND_PHRASES[spec.background]
    parts = []
    for o in spec.objects:
        solid = str(rng.choice(["solid", "plain"])) if rng.random() < 0.3 else None
        parts.append(object_phrase(o, solid))
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
    """Render ``spec`` with its canonical v3 caption."""
    image, masks = render_scene(spec)
    return Scene(spec, image, masks, caption(spec))


def make_heldout_scenes(n: int, seed: int = 0, allow_novel: bool = False) -> list[Scene]:
    """``n`` evaluation scenes of the whole v3 world from a stream separate from pretraining's."""
    rng = np.random.default_rng([seed, 2029, 3])
    return [make_scene(random_spec(rng, allow_novel=allow_novel)) for _ in range(n)]


def make_demo_scene(seed: int = 0) -> DemoScene:
    """Three novel v3 concepts (large, not touching) on a random v3 background, with loose masks."""
    rng = np.random.default_rng([seed, 1007, 3])
    picks = rng.choice(len(NOVEL_CONCEPTS), size=3, replace=False)
    return _on_a_v3_background(_extraction_scene(rng, [NOVEL_CONCEPTS[i] for i in picks], SIZE), rng)


def make_concept_scene(seed: int, n_concepts: int) -> DemoScene:
    """A scene of ``n_concepts`` novel v3 concepts (large, not touching) with loose masks, for ``bas fidelity
    --concepts`` on a v3 model. At most ``MAX_CONCEPTS``: every v3 object is large, and pretraining's scenes hold
    four at most."""
    if not 1 <= n_concepts <= MAX_CONCEPTS:
        raise ValueError(f"n_concepts must be 1..{MAX_CONCEPTS} in world v3 (its objects are all large; its "
                         f"scenes hold at most {MAX_CONCEPTS}), got {n_concepts}")
    rng = np.random.default_rng([seed, n_concepts, 4441, 3])
    order = rng.permutation(len(NOVEL_CONCEPTS))
    return _on_a_v3_background(_extraction_scene(rng, [NOVEL_CONCEPTS[i] for i in order[:n_concepts]], SIZE), rng)


def _on_a_v3_background(demo: DemoScene, rng: np.random.Generator) -> DemoScene:
    """``demo`` (made by v1's ``_extraction_scene``) with its background in v3's and its caption v3's."""
    spec = demo.spec
    if spec.background not in BACKGROUNDS:
        # _extraction_scene draws from v1's six backgrounds; v3 has four: redraw it, same objects and masks
        spec = replace(spec, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    image, masks = render_scene(spec)
    return replace(demo, spec=spec, image=image, masks=masks, caption=caption(spec))
