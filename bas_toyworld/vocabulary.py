"""The v1 toy world's vocabulary and scene types: shapes, colours, textures, sizes, backgrounds and the caption
phrases, the ``Concept`` a handle captures, the held-out ``NOVEL_CONCEPTS``, and the specs and scenes that
``render`` draws and ``world`` samples (``world`` re-exports all of it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

IMAGE_SIZE = 64

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
SIZE_JITTER = 0.06  # +-6% radius jitter keeps the model from memorising exact pixel footprints

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
