"""The toy world's versions, and which one a model folder was trained on.

v1 is ``world.py`` (the committed ``weights/toy_sd`` and v2's designs were trained on it); v3 is ``world_v3.py``
(issue 22: fewer, larger, more different objects). A model folder names its world in ``toy_world.json``; a folder
without one (v1, v2, old packs' models) is a v1 model, so everything made before v3 keeps its meaning.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import world as _v1
from . import world_v3 as _v3
from .world import Concept, DemoScene, SceneSpec

WORLD_FILE = "toy_world.json"


@dataclass(frozen=True)
class World:
    """One version of the toy world: its vocabulary and its scene, caption and demo makers."""

    name: str
    shapes: tuple[str, ...]
    textures: tuple[str, ...]
    backgrounds: tuple[str, ...]
    novel_concepts: tuple[Concept, ...]
    #: random_spec(rng, allow_novel=False, count_weights=None) -> SceneSpec
    random_spec: Callable[..., SceneSpec]
    #: caption(spec, rng=None) -> str: canonical without rng, a paraphrase with it
    caption: Callable[..., str]
    make_demo_scene: Callable[[int], DemoScene]
    #: make_concept_scene(seed, n) -> DemoScene of n concepts, 1 <= n <= max_concepts (``bas fidelity --concepts``)
    make_concept_scene: Callable[[int, int], DemoScene]
    max_concepts: int


def _v1_spec(rng: np.random.Generator, allow_novel: bool = False,
             count_weights: tuple[float, ...] | None = None) -> SceneSpec:
    kw = {} if count_weights is None else {"count_weights": count_weights}
    return _v1.random_spec(rng, allow_novel=allow_novel, **kw)


WORLDS: dict[str, World] = {
    "v1": World("v1", _v1.SHAPES, _v1.TEXTURES, tuple(_v1.BACKGROUNDS), _v1.NOVEL_CONCEPTS, _v1_spec, _v1.caption,
                _v1.make_demo_scene, _v1.make_concept_scene, _v1.MAX_CONCEPTS),
    "v3": World("v3", _v3.SHAPES, _v3.TEXTURES, _v3.BACKGROUNDS, _v3.NOVEL_CONCEPTS, _v3.random_spec, _v3.caption,
                _v3.make_demo_scene, _v3.make_concept_scene, _v3.MAX_CONCEPTS),
}


def get_world(name: str) -> World:
    """The world called ``name`` (a clear error naming the versions there are)."""
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; one of {sorted(WORLDS)}")
    return WORLDS[name]


def model_world(model_dir: str | Path) -> str:
    """The world a toy model folder was trained on: its ``toy_world.json``, or "v1" where there is none."""
    path = Path(model_dir) / WORLD_FILE
    if not path.is_file():
        return "v1"
    try:
        name = json.loads(path.read_text())["world"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected {{\"world\": NAME}}, could not read it ({exc})") from exc
    get_world(name)
    return name


def write_model_world(model_dir: str | Path, name: str) -> None:
    """Record in a model folder which world it was trained on (atomically; nothing is written for v1, whose
    folders never had the file)."""
    from bas_engine.fileio import atomic_write_text

    get_world(name)
    if name != "v1":
        atomic_write_text(Path(model_dir) / WORLD_FILE, json.dumps({"world": name}) + "\n")
