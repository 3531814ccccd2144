"""In-process ComfyUI setup shared by the node tests (tests/comfy/test_nodes*.py).

Needs a ComfyUI checkout in COMFYUI_PATH and its interpreter, e.g.

    COMFYUI_PATH=/work/comfyui /work/comfyui/.venv/bin/python -m pytest -q tests/comfy/test_nodes.py

Without it, the test modules skip themselves with the reason (they check COMFYUI_PATH and that ComfyUI
imports). Helpers are fixtures: ``bas`` (the pack loaded by ComfyUI's loader), ``run_node``,
``checkpoint_path``, ``comfy_dirs``. Every model folder
ComfyUI would write to (break_a_scene, loras, embeddings, temp, output) is pointed at a temporary folder, so
nothing lands in the ComfyUI checkout.
"""
from __future__ import annotations

import asyncio
import os
import sys
from types import SimpleNamespace

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")

NODE_IDS = ["MaskedConceptLoader", "BreakASceneTrainer", "ConceptPackLoader", "HandleInjector",
            "ConceptPromptEncoder", "ConceptPackExport"]


def _skip_reason() -> str | None:
    if not COMFYUI_PATH:
        return "COMFYUI_PATH is not set: the node tests run inside a real ComfyUI checkout"
    if not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "sd.py")):
        return f"COMFYUI_PATH={COMFYUI_PATH!r} is not a ComfyUI checkout"
    return None


SKIP_REASON = _skip_reason()

if SKIP_REASON is None:
    # ComfyUI first: its top-level `nodes` module must win over this repository's `nodes/` package.
    for path in (TESTS, REPO):
        if path not in sys.path:
            sys.path.insert(0, path)
    if COMFYUI_PATH in sys.path:
        sys.path.remove(COMFYUI_PATH)
    sys.path.insert(0, COMFYUI_PATH)
    try:
        import torch

        import utils.extra_config  # noqa: F401  (ComfyUI's utils/ package, before anything shadows `utils`)
        import comfy.cli_args

        comfy.cli_args.args.cpu = comfy.cli_args.args.cpu or not torch.cuda.is_available()
        import comfy.model_management  # noqa: F401
    except ImportError as exc:  # pragma: no cover - wrong interpreter
        SKIP_REASON = f"ComfyUI cannot be imported with this interpreter ({exc}); use ComfyUI's venv python"


@pytest.fixture(scope="session")
def comfy_skip_reason():
    return SKIP_REASON


@pytest.fixture(scope="session")
def checkpoint_path():
    """name -> path of a cached fixture checkpoint (see comfy_fixtures.FIXTURES)."""
    from comfy_fixtures import cached_checkpoint

    return cached_checkpoint


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    """Temporary model/temp/output folders registered with folder_paths (before the pack registers its own)."""
    import folder_paths

    root = tmp_path_factory.mktemp("comfy")
    dirs = SimpleNamespace(models=root / "models", temp=root / "temp", output=root / "output")
    for name in ("loras", "embeddings", "break_a_scene"):
        setattr(dirs, name, dirs.models / name)
        getattr(dirs, name).mkdir(parents=True)
    dirs.temp.mkdir()
    dirs.output.mkdir()
    saved = (folder_paths.models_dir, {k: (list(v[0]), set(v[1])) for k, v in folder_paths.folder_names_and_paths.items()})
    folder_paths.models_dir = str(dirs.models)
    for name in ("loras", "embeddings"):
        folder_paths.folder_names_and_paths[name] = ([str(getattr(dirs, name))], set(folder_paths.supported_pt_extensions))
    folder_paths.folder_names_and_paths.pop("break_a_scene", None)
    folder_paths.set_temp_directory(str(dirs.temp))
    folder_paths.set_output_directory(str(dirs.output))
    yield dirs
    folder_paths.models_dir = saved[0]
    folder_paths.folder_names_and_paths.clear()
    folder_paths.folder_names_and_paths.update(saved[1])


@pytest.fixture(scope="session")
def bas(comfy_dirs):
    """The node pack loaded by ComfyUI's own custom-node loader: node classes and the package's modules."""
    import nodes as comfy_nodes

    assert os.path.dirname(os.path.abspath(comfy_nodes.__file__)) == os.path.abspath(COMFYUI_PATH), \
        "ComfyUI's nodes.py must be imported, not this repository's nodes/ package"
    assert asyncio.run(comfy_nodes.load_custom_node(REPO)), "ComfyUI could not load the node pack"
    classes = {node_id: comfy_nodes.NODE_CLASS_MAPPINGS[node_id] for node_id in NODE_IDS}
    package = classes["BreakASceneTrainer"].__module__.rsplit(".nodes.", 1)[0]
    # Only the constant-only modules may load with the pack; anything that pulls in diffusers must wait.
    light = {f"{package}.bas_engine", f"{package}.bas_engine.families"}
    engine_loaded = sorted(m for m in sys.modules if m.startswith(package + ".bas_engine") and m not in light)
    return SimpleNamespace(classes=classes, package=package, comfy_nodes=comfy_nodes, engine_at_load=engine_loaded,
                           module=lambda name: sys.modules[f"{package}.{name}"])


def _run_node(node_cls, unique_id: str = "1", **inputs):
    """Run a V3 node's execute() the way ComfyUI does: on a class clone with hidden inputs, in inference mode."""
    import torch

    clone = node_cls.PREPARE_CLASS_CLONE({"UNIQUE_ID": unique_id})
    with torch.inference_mode():
        return clone.execute(**inputs)


@pytest.fixture(scope="session")
def run_node():
    """run_node(node_cls, unique_id="1", **inputs) -> io.NodeOutput."""
    return _run_node
