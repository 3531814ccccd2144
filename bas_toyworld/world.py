"""Procedural picture world: seeded scenes of textured shapes with exact masks and captions.

Pictures are 64x64 RGB. Every object is a (shape, colour, texture) "concept" drawn at one of two
sizes; later objects occlude earlier ones, and each returned mask holds an object's *visible*
pixels. Edges are anti-aliased by 4x supersampling so the pictures look like smooth images rather
than pixel art (the VAE and the judge both behave better on that).

A fixed set of concepts, ``NOVEL_CONCEPTS``, never occurs in pretraining data
(``random_spec(allow_novel=False)``); the Break-A-Scene demo extracts those from one picture.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # anti-aliasing factor of the renderer

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
# Saturated, well separated colours (nearest pair ~90 RGB units apart); backgrounds use pale or
# very dark unsaturated colours so the judge can tell objects from background by colour alone.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 30),
    "green": (30, 170, 50),
    "cyan": (20, 200, 220),
    "blue": (30, 60, 220),
    "purple": (140, 40, 200),
    "pink": (245, 90, 190),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
SIZES: dict[str, float] = {"small": 7.5, "large": 11.5}  # object radius in pixels
DARK = 0.5  # texture ink is the object colour times DARK: same hue, so colour stays identifiable
SIZE_JITTER = 0.06  # +-6% radius jitter keeps the model from memorising exact pixel footprints

# Texture geometry in pixels, anchored to the object centre so a concept looks the same anywhere.
STRIPE_PERIOD = 6.0
DOT_PERIOD = 6.0
DOT_RADIUS = 1.5
CHECKER_CELL = 4.0

# Backgrounds are the "contexts" a prompt can ask for. Each has one or two colours.
BACKGROUNDS: dict[str, dict[str, tuple[int, int, int]]] = {
    "white": {"white": (235, 235, 235)},
    "gray": {"gray": (128, 128, 128)},
    "beach": {"sky": (165, 210, 240), "sand": (225, 200, 150)},
    "night": {"navy": (20, 20, 40), "starlight": (240, 230, 150)},
    "grass": {"grass": (150, 200, 110), "blade": (115, 170, 85)},
    "tiles": {"tile": (210, 195, 170), "grout": (150, 130, 110)},
}
BACKGROUND_PHRASES: dict[str, str] = {
    "white": "on a white background",
    "gray": "on a gray background",
    "beach": "on the beach",
    "night": "at night",
    "grass": "on the grass",
    "tiles": "on a tiled floor",
}
# Style prefixes carry no visual meaning in this world; they are in the captions so prompts such
# as "a photo of <asset0> on the beach" use words the text encoder has seen.
PREFIXES: tuple[str, ...] = (
    "a photo of", "a picture of", "an image of", "a drawing of", "an oil painting of",
    "a rendering of", "a close up photo of",
)
JOINERS: tuple[str, ...] = ("and", "next to", "with", "beside")


@dataclass(frozen=True)
class Concept:
    """An object identity: what a Break-A-Scene handle should capture."""

    shape: str
    colour: str
    texture: str

    def phrase(self) -> str:
        tex = "" if self.texture == "solid" else f" {self.texture}"
        return f"{self.colour}{tex} {self.shape}"


# Fixed, documented held-out combinations: every attribute is common in pretraining, but these
# exact triples never are. Shapes and colours are all distinct so any subset fits in one scene.
NOVEL_CONCEPTS: tuple[Concept, ...] = (
    Concept("star", "orange", "checkered"),
    Concept("ring", "purple", "striped"),
    Concept("triangle", "cyan", "dotted"),
    Concept("cross", "pink", "striped"),
    Concept("square", "yellow", "dotted"),
    Concept("circle", "green", "checkered"),
)
_NOVEL_SET = frozenset(NOVEL_CONCEPTS)


def is_novel(concept: Concept) -> bool:
    return concept in _NOVEL_SET


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    texture: str
    size: str  # "small" | "large"
    x: float  # centre, pixels
    y: float
    scale: float = 1.0  # radius jitter factor

    @property
    def concept(self) -> Concept:
        return Concept(self.shape, self.colour, self.texture)

    @property
    def radius(self) -> float:
        return SIZES[self.size] * self.scale


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]  # drawing order: later objects occlude earlier ones
    background: str
    size: int = IMAGE_SIZE

    def to_json(self) -> dict:
        return {"background": self.background, "size": self.size,
                "objects": [asdict(o) for o in self.objects]}

    @staticmethod
    def from_json(d: dict) -> "SceneSpec":
        return SceneSpec(tuple(ObjectSpec(**o) for o in d["objects"]), d["background"], d.get("size", IMAGE_SIZE))


@dataclass
class Scene:
    spec: SceneSpec
    image: np.ndarray  # uint8 (H, W, 3)
    masks: list[np.ndarray]  # bool (H, W), visible pixels, one per object
    caption: str


@dataclass
class DemoScene(Scene):
    loose_masks: list[np.ndarray] = field(default_factory=list)  # bool (H, W), human-like masks
    concepts: list[Concept] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# geometry


def _star_vertices() -> np.ndarray:
    outer, inner = 1.08, 0.45
    ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    rad = np.where(np.arange(10) % 2 == 0, outer, inner)
    v = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    v[:, 1] -= 0.5 * (v[:, 1].max() + v[:, 1].min())  # centre the bounding box vertically
    return v


_STAR = _star_vertices()
_TRIANGLE = np.array([[0.0, -1.0], [1.1, 0.9], [-1.1, 0.9]])
SQUARE_HALF = 0.82  # square half side, in radii (keeps its area close to the circle's)
RING_INNER = 0.55
CROSS_HALF_WIDTH = 0.32

# Bounding box of each shape in radius units: (xmin, xmax, ymin, ymax). The judge uses it to turn a
# detected bounding box into a radius estimate.
SHAPE_EXTENTS: dict[str, tuple[float, float, float, float]] = {
    "circle": (-1.0, 1.0, -1.0, 1.0),
    "square": (-SQUARE_HALF, SQUARE_HALF, -SQUARE_HALF, SQUARE_HALF),
    "triangle": (-1.1, 1.1, -1.0, 0.9),
    "star": (float(_STAR[:, 0].min()), float(_STAR[:, 0].max()), float(_STAR[:, 1].min()), float(_STAR[:, 1].max())),
    "ring": (-1.0, 1.0, -1.0, 1.0),
    "cross": (-1.0, 1.0, -1.0, 1.0),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Point-in-polygon for a polygon that is star-shaped around the origin (fan test)."""
    inside = np.zeros(u.shape, bool)
    n = len(verts)
    for k in range(n):
        a, b = verts[k], verts[(k + 1) % n]
        # Inside triangle (0, a, b): same orientation test against its three edges.
        c1 = a[0] * v - a[1] * u  # cross(a, p)
        c2 = (b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0])  # cross(b - a, p - a)
        c3 = -b[0] * (v - b[1]) + b[1] * (u - b[0])  # cross(0 - b, p - b)
        s = np.sign(a[0] * b[1] - a[1] * b[0])
        inside |= (c1 * s >= 0) & (c2 * s >= 0) & (c3 * s >= 0)
    return inside


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside test in normalised object coordinates (radius 1, y pointing down)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF
    if shape == "triangle":
        return _inside_polygon(u, v, _TRIANGLE)
    if shape == "star":
        return _inside_polygon(u, v, _STAR)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= RING_INNER**2)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        w = CROSS_HALF_WIDTH
        return ((au <= w) & (av <= 1.0)) | ((av <= w) & (au <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def texture_ink(texture: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """True where the texture paints the dark ink; dx, dy are pixel offsets from the object centre."""
    if texture == "solid":
        return np.zeros(dx.shape, bool)
    if texture == "striped":
        return np.mod(dy + STRIPE_PERIOD / 4, STRIPE_PERIOD) >= STRIPE_PERIOD / 2
    if texture == "dotted":
        ox = np.mod(dx + DOT_PERIOD / 2, DOT_PERIOD) - DOT_PERIOD / 2
        oy = np.mod(dy + DOT_PERIOD / 2, DOT_PERIOD) - DOT_PERIOD / 2
        return ox * ox + oy * oy <= DOT_RADIUS**2
    if texture == "checkered":
        cx = np.floor(dx / CHECKER_CELL)
        cy = np.floor(dy / CHECKER_CELL)
        return np.mod(cx + cy, 2) == 1
    raise ValueError(f"unknown texture {texture!r}")


@lru_cache(maxsize=4)
def _hires_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE  # sample positions in output pixels
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


@lru_cache(maxsize=1)
def _night_stars() -> np.ndarray:
    # Fixed star field (same in every night picture): a jittered lattice from a constant seed.
    rng = np.random.default_rng(20231204)
    g = np.arange(4, 64, 11.0)
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + rng.uniform(-3, 3, (len(g) ** 2, 2))
    return pts


def _render_background(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cols = {k: np.array(v, np.float32) for k, v in BACKGROUNDS[name].items()}
    img = np.empty(x.shape + (3,), np.float32)
    if name in ("white", "gray"):
        img[:] = next(iter(cols.values()))
    elif name == "beach":
        sky = y < 24.0 + 1.5 * np.sin(x / 5.0)
        img[:] = cols["sand"]
        img[sky] = cols["sky"]
    elif name == "night":
        img[:] = cols["navy"]
        scale = x.shape[0] / (SUPERSAMPLE * IMAGE_SIZE)
        for px, py in _night_stars() * scale:
            img[(x - px) ** 2 + (y - py) ** 2 <= 0.9**2] = cols["starlight"]
    elif name == "grass":
        img[:] = cols["grass"]
        img[np.mod(x + 2.5 * np.sin(y / 3.0), 5.0) < 1.2] = cols["blade"]
    elif name == "tiles":
        img[:] = cols["tile"]
        img[(np.mod(x, 16.0) < 1.25) | (np.mod(y, 16.0) < 1.25)] = cols["grout"]
    else:
        raise ValueError(f"unknown background {name!r}")
    return img


def _object_window(obj: ObjectSpec, hi: int) -> tuple[slice, slice]:
    r = obj.radius * 1.25 + 1.0
    x0 = max(0, int(math.floor((obj.x - r) * SUPERSAMPLE)))
    x1 = min(hi, int(math.ceil((obj.x + r) * SUPERSAMPLE)))
    y0 = max(0, int(math.floor((obj.y - r) * SUPERSAMPLE)))
    y1 = min(hi, int(math.ceil((obj.y + r) * SUPERSAMPLE)))
    return slice(y0, y1), slice(x0, x1)


def _downsample(a: np.ndarray, size: int) -> np.ndarray:
    s = SUPERSAMPLE
    return a.reshape(size, s, size, s, *a.shape[2:]).mean(axis=(1, 3))


def render_scene(spec: SceneSpec) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render a scene. Returns (uint8 image HxWx3, list of bool visible-pixel masks HxW)."""
    size = spec.size
    hi = size * SUPERSAMPLE
    x, y = _hires_grid(size)
    canvas = _render_background(spec.background, x, y)
    owner = np.full((hi, hi), -1, np.int16)
    for i, obj in enumerate(spec.objects):
        win = _object_window(obj, hi)
        dx, dy = x[win] - obj.x, y[win] - obj.y
        inside = shape_inside(obj.shape, dx / obj.radius, dy / obj.radius)
        colour = np.array(COLOURS[obj.colour], np.float32)
        ink = texture_ink(obj.texture, dx, dy)
        paint = np.where(ink[..., None], colour * DARK, colour)
        canvas[win][inside] = paint[inside]
        owner[win][inside] = i
    image = np.clip(np.round(_downsample(canvas, size)), 0, 255).astype(np.uint8)
    n = len(spec.objects)
    if n == 0:
        return image, []
    covs = np.stack([_downsample((owner == i).astype(np.float32), size) for i in range(n)])
    top = n - 1 - np.argmax(covs[::-1], axis=0)  # a 50/50 pixel goes to the object drawn last
    masks = [(covs[i] >= 0.5) & (top == i) for i in range(n)]
    return image, masks


def shape_coverage(obj: ObjectSpec, size: int = IMAGE_SIZE) -> np.ndarray:
    """Unoccluded coverage in [0, 1] of one object on a size x size canvas."""
    hi = size * SUPERSAMPLE
    x, y = _hires_grid(size)
    full = np.zeros((hi, hi), np.float32)
    win = _object_window(obj, hi)
    full[win] = shape_inside(obj.shape, (x[win] - obj.x) / obj.radius, (y[win] - obj.y) / obj.radius)
    return _downsample(full, size)


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


def perturbed_masks(demo: "DemoScene", quality: str, seed: int = 0) -> list[np.ndarray]:
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


def with_masks(demo: "DemoScene", quality: str, seed: int = 0) -> "DemoScene":
    """A copy of ``demo`` whose user masks (the ones the method trains with) are of ``quality``; the exact masks,
    which the judge scores attention against, stay."""
    import dataclasses

    return dataclasses.replace(demo, loose_masks=perturbed_masks(demo, quality, seed))


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
