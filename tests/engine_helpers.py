"""Helpers shared by the engine tests (a plain module: test files import it by name, unlike conftest.py,
which has a namesake in tests/comfy/)."""
from __future__ import annotations

import os

import pytest
import torch

from bas_engine.config import TrainConfig
from bas_engine.scene import Scene, load_scene

# ../shared/scenes beside the checkout (as in CI: a fresh clone with shared/ beside it)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_SCENES = os.environ.get("BAS_SHARED_SCENES") or os.path.join(os.path.dirname(ROOT), "shared", "scenes")
needs_shared_scenes = pytest.mark.skipif(
    not os.path.isdir(SHARED_SCENES),
    reason=f"the shared scenes are not at {SHARED_SCENES} (../shared/scenes beside the checkout, or BAS_SHARED_SCENES)")
RESOLUTION = 64


def make_scene(size: int = RESOLUTION, concepts: int = 3, seed: int = 0) -> Scene:
    """A smooth random picture with `concepts` soft rectangular masks side by side (made in code)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(size, size),
                                            mode="bilinear", align_corners=False)[0].clamp(0, 1)
    masks = torch.zeros(concepts, size, size)
    width = size // concepts
    for i in range(concepts):
        masks[i, size // 4: 3 * size // 4, i * width: (i + 1) * width] = 1.0
        masks[i, size // 4 - 2: size // 4, i * width: (i + 1) * width] = 0.5   # a soft edge
    return load_scene(image, masks)


def small_config(**overrides) -> TrainConfig:
    """Two phase-1 and two phase-2 steps at 64 px, LoRA rank 4 with alpha 2 (scale 0.5)."""
    settings = dict(phase1_steps=2, phase2_steps=2, resolution=RESOLUTION, lora_rank=4, lora_alpha=2.0,
                    mixed_precision="no", seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def state_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert sorted(state) == sorted(snapshot)
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), f"{key} changed"
