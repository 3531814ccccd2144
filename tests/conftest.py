"""Shared fixtures of the engine tests: tiny random-weight models, a 3-concept scene made in code, a trained pack.

Everything is small (64 px, a few steps) so the whole engine suite runs in well under three minutes on CPU.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

# The engine is imported from the checkout (no install needed); tests/ holds plain helper modules too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

from bas_engine.config import TrainConfig  # noqa: E402
from bas_engine.scene import Scene, load_scene  # noqa: E402
from bas_engine.testing import tiny_components  # noqa: E402

# ../shared/scenes beside the checkout (as in CI: a fresh clone with shared/ beside it)
SHARED_SCENES = os.path.join(os.path.dirname(ROOT), "shared", "scenes")
RESOLUTION = 64

# One thread: the test machine has two cores shared with other jobs, where more threads only contend.
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def tiny():
    """Tiny components shared by the tests that only read them; checked unchanged at the end of the session."""
    components = tiny_components(seed=0)
    before = {name: state_snapshot(getattr(components, name)) for name in ("unet", "vae", "text_encoder")}
    vocab = dict(components.tokenizer.get_vocab())
    yield components
    for name, snapshot in before.items():
        assert_same_state(getattr(components, name), snapshot)
    assert components.tokenizer.get_vocab() == vocab


@pytest.fixture
def components():
    """Fresh tiny components for a test that attaches, installs or trains something (0.2 s to build)."""
    return tiny_components(seed=0)


@pytest.fixture(scope="session")
def scene3() -> Scene:
    return make_scene()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(pack, config): LoRA pack trained 2+2 steps at 64 px on the 3-concept scene, text encoder LoRA included."""
    from bas_engine.trainer import train

    config = small_config(train_text_encoder=True)
    pack = train(tiny_components(seed=0), make_scene(), config, device="cpu",
                 cache_dir=str(tmp_path_factory.mktemp("cache")))
    return pack, config
