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

from bas_engine.scene import Scene  # noqa: E402
from bas_engine.testing import tiny_components  # noqa: E402
from engine_helpers import assert_same_state, make_scene, small_config, state_snapshot  # noqa: E402,F401

# One thread: the test machine has two cores shared with other jobs, where more threads only contend.
torch.set_num_threads(1)


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
