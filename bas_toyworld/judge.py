"""The judge: a detector that knows the toy world's rules, plus the evaluation scores.

Pipeline: every pixel is labelled with the nearest world colour (object colours are matched as the
segment between the colour and its dark texture ink, so textures and blur inside an object keep
its label; background colours as points; pixels far from everything, e.g. blurred edges between
two colours, are "unknown"). Objects are connected components of one object colour; the shape is
the best-IoU template fitted over position and radius (pixels of other objects are ignored, so an
occluded shape still fits); the texture comes from the ink darkness pattern inside the object. The
background is the background whose colours explain most non-object pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .render import CHECKER_CELL, DARK, DOT_PERIOD, SHAPE_EXTENTS, STRIPE_PERIOD, shape_inside, texture_ink
from .vocabulary import BACKGROUNDS, COLOURS, SHAPES, SIZES, Concept, ObjectSpec, SceneSpec
from .world import dilate4

UNKNOWN = -1
_OBJ_NAMES: list[str] = list(COLOURS)
_OBJ_RGB = np.array([COLOURS[c] for c in _OBJ_NAMES], np.float32)
_BG_ENTRIES: list[tuple[str, str]] = [(bg, name) for bg, cols in BACKGROUNDS.items() for name in cols]
_BG_RGB = np.array([BACKGROUNDS[bg][name] for bg, name in _BG_ENTRIES], np.float32)
N_OBJ = len(_OBJ_NAMES)
T_LO, T_HI = DARK - 0.08, 1.08  # brightness range along an object colour still counted as that colour
MAX_DIST = 60.0  # RGB distance beyond which a pixel is "unknown" (mixed edge, off-palette)
MIN_AREA = 30  # px; smaller same-colour specks are noise (the smallest rendered star has ~70 px)
MIN_SHAPE_IOU = 0.6  # blobs that fit no shape this well are not objects (rendered ones fit >= 0.74)
SIZE_SPLIT = 0.5 * (SIZES["small"] + SIZES["large"])


# --------------------------------------------------------------------------------------------
# image helpers


def to_uint8(image: Any) -> np.ndarray:
    """Accept PIL images, HxWx3 / 3xHxW arrays or tensors (uint8, or float in [0, 1])."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"), np.uint8)
    if hasattr(image, "detach"):  # torch
        image = image.detach().cpu().float().numpy()
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return a


def label_pixels(image: Any, background: str | None = None) -> np.ndarray:
    """(H, W) int labels: 0..N_OBJ-1 object colours, N_OBJ + k background entry k, -1 unknown.

    With ``background`` given, only that background's colours compete with the object colours:
    a blurred green-on-white rim is pale green, which would otherwise be labelled "grass"."""
    p = to_uint8(image).astype(np.float32)
    c = _OBJ_RGB
    t = np.clip((p @ c.T) / (c * c).sum(1), T_LO, T_HI)  # (H, W, 8): brightness along each colour
    d_obj = np.linalg.norm(p[..., None, :] - t[..., None] * c, axis=-1)
    d_bg = np.linalg.norm(p[..., None, :] - _BG_RGB, axis=-1)
    if background is not None:
        d_bg[..., [bg != background for bg, _ in _BG_ENTRIES]] = np.inf
    d = np.concatenate([d_obj, d_bg], -1)
    lab = d.argmin(-1)
    lab[d.min(-1) > MAX_DIST] = UNKNOWN
    return _harmonise_object_colours(lab)


def _background_shares(lab: np.ndarray) -> dict[str, float]:
    """Share of background-labelled pixels explained by each background's colours."""
    shares = {bg: 0.0 for bg in BACKGROUNDS}
    bg_pix = lab >= N_OBJ
    if bg_pix.any():
        counts = np.bincount(lab[bg_pix] - N_OBJ, minlength=len(_BG_ENTRIES))
        for (bg, _), n in zip(_BG_ENTRIES, counts):
            shares[bg] += float(n) / float(bg_pix.sum())
    return shares


def _box5(a: np.ndarray) -> np.ndarray:
    """5x5 box sum with zero padding, for a stack of maps (..., H, W)."""
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(2, 2), (2, 2)])
    c = np.cumsum(np.cumsum(p, -1), -2)
    c = np.pad(c, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    return c[..., 5:, 5:] - c[..., :-5, 5:] - c[..., 5:, :-5] + c[..., :-5, :-5]


def _harmonise_object_colours(lab: np.ndarray) -> np.ndarray:
    """Relabel each object pixel with the majority object colour of its 5x5 neighbourhood.

    Dark ink pixels carry little chroma, so under noise some of them flip to a neighbouring hue
    (dark orange vs dark yellow); the vote fixes that without moving object/background borders."""
    obj = (lab >= 0) & (lab < N_OBJ)
    if not obj.any():
        return lab
    onehot = (lab[None] == np.arange(N_OBJ)[:, None, None]).astype(np.int32)
    votes = _box5(onehot)
    out = lab.copy()
    out[obj] = votes.argmax(0)[obj]
    return out


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask (min-label propagation; fine at 64x64)."""
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        m = lab.copy()
        np.minimum(m[1:], lab[:-1], out=m[1:])
        np.minimum(m[:-1], lab[1:], out=m[:-1])
        np.minimum(m[:, 1:], lab[:, :-1], out=m[:, 1:])
        np.minimum(m[:, :-1], lab[:, 1:], out=m[:, :-1])
        m[~mask] = big
        if np.array_equal(m, lab):
            break
        lab = m
    return [lab == v for v in np.unique(lab[mask])]


def _erode(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] &= m[:-1]
    out[:-1] &= m[1:]
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


# --------------------------------------------------------------------------------------------
# shape fitting


_LUT_RANGE = 1.3  # the lookup tables cover [-1.3, 1.3]^2 in radius units
_LUT_N = 512


def _shape_lut(shape: str) -> np.ndarray:
    if shape not in _LUTS:
        c = (np.arange(_LUT_N) + 0.5) / _LUT_N * 2 * _LUT_RANGE - _LUT_RANGE
        v, u = np.meshgrid(c, c, indexing="ij")
        _LUTS[shape] = shape_inside(shape, u, v)
    return _LUTS[shape]


_LUTS: dict[str, np.ndarray] = {}
_SS = 2  # supersampling of fitted templates (2x2 is enough to rank shapes; 3x3 costs twice as much)


def _template(shape: str, cx: float, cy: float, r: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Coverage of a shape on a pixel window, given its sample coordinates (window size * _SS each).
    Looked up in a precomputed table; indices beyond the table land on its (empty) border."""
    lut = _shape_lut(shape)
    scale = _LUT_N / (2 * _LUT_RANGE * r)
    iy = np.clip(((ys - cy) * scale + _LUT_N / 2).astype(np.int64), 0, _LUT_N - 1)
    ix = np.clip(((xs - cx) * scale + _LUT_N / 2).astype(np.int64), 0, _LUT_N - 1)
    hit = lut[np.ix_(iy, ix)].view(np.uint8)
    cov = hit[0::2, 0::2] + hit[1::2, 0::2] + hit[0::2, 1::2] + hit[1::2, 1::2]
    return cov * np.float32(0.25)


def _soft_iou(t: np.ndarray, m: np.ndarray, valid: np.ndarray) -> float:
    inter = (np.minimum(t, m) * valid).sum()
    union = (np.maximum(t, m) * valid).sum()
    return float(inter / union) if union > 0 else 0.0


def fit_shape(mask: np.ndarray, ignore: np.ndarray, shapes: Sequence[str] = SHAPES) -> tuple[str, float, tuple[float, float, float], dict[str, float]]:
    """Best template for a component: (shape, IoU, (cx, cy, r), IoU per shape).

    Pixels in ``ignore`` (other objects, unknown edge pixels) count for neither side, so occluders
    and blurred rims do not penalise any shape."""
    h, w = mask.shape
    ys_idx, xs_idx = np.nonzero(mask)
    by0, by1, bx0, bx1 = ys_idx.min(), ys_idx.max() + 1, xs_idx.min(), xs_idx.max() + 1
    pad = 3 + int(0.3 * max(by1 - by0, bx1 - bx0))
    y0, y1, x0, x1 = max(0, by0 - pad), min(h, by1 + pad), max(0, bx0 - pad), min(w, bx1 + pad)
    m = mask[y0:y1, x0:x1].astype(np.float32)
    valid = (~ignore[y0:y1, x0:x1] | mask[y0:y1, x0:x1]).astype(np.float32)
    ys = y0 + (np.arange((y1 - y0) * _SS) + 0.5) / _SS
    xs = x0 + (np.arange((x1 - x0) * _SS) + 0.5) / _SS

    def search(shape: str, state: tuple[float, float, float], steps: tuple[float, float, float], iters: int):
        best = (_soft_iou(_template(shape, *state, ys, xs), m, valid), state)
        for _ in range(iters):
            cx, cy, r = best[1]
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for dr in (-1, 0, 1):
                        if dx == dy == dr == 0:
                            continue
                        s = (cx + dx * steps[0], cy + dy * steps[1], max(2.0, r * (1 + dr * steps[2])))
                        iou = _soft_iou(_template(shape, *s, ys, xs), m, valid)
                        if iou > best[0]:
                            best = (iou, s)
            steps = (steps[0] / 2, steps[1] / 2, steps[2] / 2)
        return best, steps

    coarse = {}
    for shape in shapes:
        ex0, ex1, ey0, ey1 = SHAPE_EXTENTS[shape]
        r0 = max((bx1 - bx0) / (ex1 - ex0), (by1 - by0) / (ey1 - ey0))
        cx0 = 0.5 * (bx0 + bx1) - r0 * 0.5 * (ex0 + ex1)
        cy0 = 0.5 * (by0 + by1) - r0 * 0.5 * (ey0 + ey1)
        coarse[shape] = search(shape, (cx0, cy0, r0), (1.0, 1.0, 0.1), 1)
    scores = {s: v[0][0] for s, v in coarse.items()}
    # Refine only the two best candidates: most of the cost, little of the decision.
    for shape in sorted(scores, key=scores.get, reverse=True)[:2]:
        (iou, state), steps = coarse[shape]
        (iou, state), _ = search(shape, state, steps, 2)
        scores[shape] = iou
        coarse[shape] = ((iou, state), steps)
    best = max(scores, key=scores.get)
    return best, scores[best], coarse[best][0][1], scores


# --------------------------------------------------------------------------------------------
# texture


def _ink(image: np.ndarray, mask: np.ndarray, colour: str) -> np.ndarray:
    """Per-pixel ink darkness in [0, 1]: 0 = the object colour, 1 = its dark texture ink."""
    c = np.array(COLOURS[colour], np.float32)
    t = (image.astype(np.float32)[mask] @ c) / (c @ c)
    return np.clip((1.0 - t) / (1.0 - DARK), 0.0, 1.0)


# Phase shifts searched per texture: a full period, so matching does not depend on where the
# pattern is anchored (generated pictures need not put it exactly where the renderer does).
_TEXTURE_SHIFTS: dict[str, list[tuple[float, float]]] = {
    "striped": [(0.0, float(s)) for s in range(int(STRIPE_PERIOD))],
    "dotted": [(float(a), float(b)) for a in range(int(DOT_PERIOD)) for b in range(int(DOT_PERIOD))],
    "checkered": [(float(a), float(b)) for a in range(int(2 * CHECKER_CELL)) for b in range(int(2 * CHECKER_CELL))],
}
_TEX_OFFSETS = np.array([0.25, 0.75], np.float32)  # 2x2 supersampling inside a pixel
MIN_GAIN = 0.3  # blur can wash a texture's contrast out to this fraction


def texture_features(image: np.ndarray, mask: np.ndarray, colour: str) -> dict[str, float]:
    """Residual of the object's ink pattern against each texture (lower = better fit).

    The observed ink o is modelled as g*t + (1-g)*mean(t) for the texture's ink template t at the
    best phase, with contrast gain g in [MIN_GAIN, 1]: blur lowers contrast but keeps the mean ink
    amount, so a sparse pattern (dots) cannot pass for a dense one (stripes) and vice versa. For
    "solid" the template is zero. The object is eroded first: blurred edges mix the object colour
    with the background and look like ink (a second erosion only where the object is thick)."""
    inner = _erode(mask)
    if inner.sum() < 10:
        inner = mask
    else:
        e2 = _erode(inner)
        if e2.sum() >= 0.5 * inner.sum():
            inner = e2
    o = _ink(image, inner, colour)
    ys, xs = np.nonzero(inner)
    feats = {"mean": float(o.mean()), "solid": float(np.mean(o**2))}
    px = np.repeat(xs[:, None] + _TEX_OFFSETS[None, :], 2, 1)  # (n, 4): 2x2 samples per pixel
    py = np.tile(ys[:, None] + _TEX_OFFSETS[None, :], (1, 2))
    for tex, shifts in _TEXTURE_SHIFTS.items():
        best = np.inf
        for sx, sy in shifts:
            t = texture_ink(tex, px - sx, py - sy).mean(1)
            tc = t - t.mean()
            den = float(tc @ tc)
            g = float(np.clip(((o - t.mean()) @ tc) / den, MIN_GAIN, 1.0)) if den > 1e-9 else 1.0
            best = min(best, float(np.mean((o - t.mean() - g * tc) ** 2)))
        feats[tex] = best
    return feats


SOLID_MARGIN = 0.01  # a pattern must beat "no pattern" by this much: noise alone fits sparse dots a bit


def classify_texture(f: dict[str, float]) -> str:
    tex = min(_TEXTURE_SHIFTS, key=lambda k: f[k])
    return tex if f[tex] < f["solid"] - SOLID_MARGIN else "solid"


# --------------------------------------------------------------------------------------------
# detection


@dataclass
class DetectedObject:
    shape: str
    colour: str
    texture: str
    size: str
    mask: np.ndarray  # bool (H, W)
    centre: tuple[float, float]
    radius: float
    shape_iou: float
    shape_scores: dict[str, float] = field(default_factory=dict)
    texture_stats: dict[str, float] = field(default_factory=dict)

    @property
    def concept(self) -> Concept:
        return Concept(self.shape, self.colour, self.texture)

    def matches(self, concept: Concept) -> float:
        """Fraction of (shape, colour, texture) that agree."""
        return (float(self.shape == concept.shape) + float(self.colour == concept.colour)
                + float(self.texture == concept.texture)) / 3.0


@dataclass
class Detection:
    objects: list[DetectedObject]
    background: str | None
    background_scores: dict[str, float]
    labels: np.ndarray


def detect(image: Any, min_area: int = MIN_AREA) -> Detection:
    img = to_uint8(image)
    # Pass 1 decides the background with all colours; pass 2 relabels against that one only.
    shares = _background_shares(label_pixels(img))
    background = max(shares, key=shares.get) if any(shares.values()) else None
    lab = label_pixels(img, background)
    comps: list[tuple[int, np.ndarray]] = []
    for k in range(N_OBJ):
        mk = lab == k
        if mk.sum() < min_area:
            continue
        core = dilate4(_erode(mk))  # opening: drops 1-2 px lines of mixed colours along edges
        for raw in connected_components(mk):
            if raw.sum() < min_area:
                continue
            # Prune thin attached lines (keep pixels within 2 px of the opened core); an object
            # that is thin everywhere (a small blurred ring) has no core and is kept whole.
            c = raw & dilate4(dilate4(core & raw)) if (core & raw).any() else raw
            if c.sum() >= min_area:
                comps.append((k, c))
    objects_mask = np.zeros(lab.shape, bool)
    for _, c in comps:
        objects_mask |= c
    unknown = lab == UNKNOWN
    objs = []
    for k, comp in comps:
        shape, iou, (cx, cy, r), scores = fit_shape(comp, (objects_mask & ~comp) | unknown)
        if iou < MIN_SHAPE_IOU:
            continue
        colour = _OBJ_NAMES[k]
        feats = texture_features(img, comp, colour)
        objs.append(DetectedObject(shape, colour, classify_texture(feats), "small" if r < SIZE_SPLIT else "large",
                                   comp, (cx, cy), r, iou, scores, feats))
    return Detection(objs, background, shares, lab)


def _detection(image_or_det: Any) -> Detection:
    return image_or_det if isinstance(image_or_det, Detection) else detect(image_or_det)


def _as_concept(c: Concept | ObjectSpec | tuple | dict) -> Concept:
    if isinstance(c, Concept):
        return c
    if isinstance(c, ObjectSpec):
        return c.concept
    if isinstance(c, dict):
        return Concept(c["shape"], c["colour"], c["texture"])
    return Concept(*c)


# --------------------------------------------------------------------------------------------
# scores


def identity(image: Any, concept: Concept | ObjectSpec | tuple | dict) -> float:
    """Best fraction of (shape, colour, texture) matched by any detected object; 0 if none."""
    c = _as_concept(concept)
    det = _detection(image)
    return max((o.matches(c) for o in det.objects), default=0.0)


def prompt_fidelity(image: Any, context: str | SceneSpec) -> float:
    """1 if the requested background is the detected one, else the share of non-object pixels that
    the requested background's colours explain (low for a wrong background)."""
    bg = context.background if isinstance(context, SceneSpec) else context
    if bg not in BACKGROUNDS:
        raise ValueError(f"unknown context {bg!r}; one of {list(BACKGROUNDS)}")
    det = _detection(image)
    return 1.0 if det.background == bg else det.background_scores.get(bg, 0.0)


def leakage(image: Any, other_concepts: Iterable[Concept | ObjectSpec | tuple | dict], threshold: float = 1.0) -> float:
    """Fraction of the given (not requested) concepts that appear, i.e. some detected object
    matches at least ``threshold`` of their attributes (default: all three)."""
    det = _detection(image)
    others = [_as_concept(c) for c in other_concepts]
    if not others:
        return 0.0
    return sum(identity(det, c) >= threshold - 1e-9 for c in others) / len(others)


def _resize_bilinear(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (like torch align_corners=False)."""
    def axis_weights(n_in: int, n_out: int) -> np.ndarray:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        f = pos - lo
        m = np.zeros((n_out, n_in), np.float32)
        m[np.arange(n_out), lo] += 1 - f
        m[np.arange(n_out), hi] += f
        return m

    return axis_weights(a.shape[0], h) @ a @ axis_weights(a.shape[1], w).T


def attention_iou(attn_map: Any, mask: Any, threshold: float = 0.5) -> float:
    """IoU between a min-max normalised attention map thresholded at ``threshold`` (after bilinear
    upsampling to the mask's size) and a boolean mask."""
    if hasattr(attn_map, "detach"):
        attn_map = attn_map.detach().cpu().float().numpy()
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    a = np.asarray(attn_map, np.float32).squeeze()
    m = np.asarray(mask).squeeze() > 0.5
    a = _resize_bilinear(a, *m.shape)
    span = a.max() - a.min()
    if span <= 0:
        return 0.0
    b = (a - a.min()) / span >= threshold
    union = (b | m).sum()
    return float((b & m).sum() / union) if union else 0.0


# --------------------------------------------------------------------------------------------
# self-evaluation


def evaluate_judge(n_scenes: int = 300, seed: int = 0, noise: float = 0.0, blur: float = 0.0,
                   allow_novel: bool = True) -> dict[str, float]:
    """Attribute accuracy of ``detect`` on rendered scenes whose truth is known.

    Each true object is matched to the detection with the largest mask overlap; a missed object
    counts as wrong on every attribute."""
    from .world import degrade, random_spec, render_scene

    rng = np.random.default_rng([seed, 31])
    hits = {"shape": 0, "colour": 0, "texture": 0, "size": 0, "all": 0, "background": 0}
    n_obj = 0
    for _ in range(n_scenes):
        spec = random_spec(rng, allow_novel=allow_novel)
        image, masks = render_scene(spec)
        det = detect(degrade(image, rng, noise, blur))
        hits["background"] += det.background == spec.background
        for obj, m in zip(spec.objects, masks):
            n_obj += 1
            best = max(det.objects, key=lambda d: (d.mask & m).sum(), default=None)
            if best is None or not (best.mask & m).any():
                continue
            ok = [best.shape == obj.shape, best.colour == obj.colour, best.texture == obj.texture]
            hits["shape"] += ok[0]
            hits["colour"] += ok[1]
            hits["texture"] += ok[2]
            hits["size"] += best.size == obj.size
            hits["all"] += all(ok)
    out = {k: v / n_obj for k, v in hits.items() if k != "background"}
    out["background"] = hits["background"] / n_scenes
    out["objects"] = float(n_obj)
    return out
