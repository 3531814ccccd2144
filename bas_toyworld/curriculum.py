"""The pretraining curriculum of world v3: from the narrowed world outwards, by UNet step.

``--curriculum 600,1200,2000`` means: UNet steps 0-599 draw scenes of ``world_v3.STAGES[0]`` (one solid object on
white), 600-1199 of the next stage, and so on; from the last number on, the whole v3 world. The stage depends on
the step alone, so a resumed run draws exactly the scenes the uninterrupted one would.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import world_v3
from .world import SceneSpec
from .worlds import get_world


def parse_curriculum(text: str | None) -> tuple[int, ...]:
    """"600,1200,2000" -> (600, 1200, 2000): increasing UNet steps at which stages 2, 3, ... begin."""
    if not text:
        return ()
    try:
        starts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--curriculum: expected increasing step numbers like 600,1200,2000, got {text!r}") from None
    if any(s <= 0 for s in starts) or list(starts) != sorted(set(starts)):
        raise ValueError(f"--curriculum: steps must be positive and increasing, got {text!r}")
    if len(starts) > len(world_v3.STAGES) - 1:
        raise ValueError(f"--curriculum: at most {len(world_v3.STAGES) - 1} steps (the stages after the first: "
                         f"{list(world_v3.STAGE_NAMES[1:])}), got {len(starts)}")
    return starts


def stage_at(step: int | None, starts: tuple[int, ...]) -> world_v3.Stage:
    """The v3 stage of UNet step ``step`` (None: outside the UNet phase, the whole world). With fewer starts than
    stages, the last start opens the whole world (the stages between are skipped)."""
    if step is None or not starts:
        return world_v3.FULL
    k = sum(step >= s for s in starts)
    return world_v3.FULL if k == len(starts) else world_v3.STAGES[k]


def spec_maker(world: str, count_weights: tuple[float, ...] | None,
               starts: tuple[int, ...] = ()) -> Callable[[np.random.Generator, int | None], SceneSpec]:
    """f(rng, step) -> a pretraining scene of ``world`` (v3: of the curriculum's stage at ``step``)."""
    if world == "v1":
        if starts:
            raise ValueError("--curriculum is defined for world v3 only (its stages are v3 sub-worlds)")
        spec = get_world("v1").random_spec
        return lambda rng, step: spec(rng, count_weights=count_weights)
    if world != "v3":
        get_world(world)  # names the versions there are
        raise ValueError(f"world {world!r} has no pretraining stream")
    return lambda rng, step: world_v3.random_spec(rng, count_weights=count_weights, within=stage_at(step, starts))
