"""The toy world's renderer: a ``SceneSpec`` -> a 64x64 RGB picture and each object's visible-pixel mask.

Edges are anti-aliased by 4x supersampling so the pictures look like smooth images rather than pixel art (the VAE
and the judge both behave better on that); textures are anchored to the object's centre so a concept looks the same
anywhere. The judge fits the same shape and texture geometry (``shape_inside``, ``texture_ink``).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .vocabulary import BACKGROUNDS, COLOURS, IMAGE_SIZE, ObjectSpec, SceneSpec

SUPERSAMPLE = 4  # anti-aliasing factor of the renderer
DARK = 0.5  # texture ink is the object colour times DARK: same hue, so colour stays identifiable
# Texture geometry in pixels, anchored to the object centre so a concept looks the same anywhere.
STRIPE_PERIOD = 6.0
DOT_PERIOD = 6.0
DOT_RADIUS = 1.5
CHECKER_CELL = 4.0


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
