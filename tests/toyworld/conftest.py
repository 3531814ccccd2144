"""Make the repository root importable, keep test runs to one CPU thread (shared machine), load the pretraining
and research scripts."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the world and judge tests need numpy only
    pass


def load_script(relative: str):
    """The script at ``relative`` (from the repository root) as a module: scripts/ and research/ are not packages."""
    import importlib.util

    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pretrain_script():
    """scripts/pretrain_toy.py as a module."""
    return load_script("scripts/pretrain_toy.py")


@pytest.fixture
def research_script():
    """name -> research/<name>.py as a module."""
    return lambda name: load_script(f"research/{name}.py")
