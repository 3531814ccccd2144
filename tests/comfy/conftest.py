"""The one guard of the ComfyUI tests, and the in-process ComfyUI setup shared by tests/comfy/test_nodes*.py.

Every module here runs against a real ComfyUI: the checkout in COMFYUI_PATH (default: ../shared/comfyui beside
this clone, the pinned tree), run with its own interpreter, e.g.

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_nodes.py

When something a module needs is missing (the checkout, an interpreter that imports ComfyUI, the shared test
scenes, Chromium and playwright-core for the browser tests), the module is skipped with the reason, or, with
BAS_REQUIRE_COMFYUI=1 (set by .ci/run), it fails: in CI these tests must run. The check is here once
(``pytest_pycollect_makemodule``), not in each module.

Fixtures for the in-process tests: ``bas`` (the pack loaded by ComfyUI's loader), ``run_node``,
``checkpoint_path``, ``comfy_dirs``. Every model folder ComfyUI would write to (break_a_scene, loras,
embeddings, temp, output) is pointed at a temporary folder, so nothing lands in the ComfyUI checkout.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
from types import SimpleNamespace

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH") or os.path.join(SHARED, "comfyui")
os.environ.setdefault("COMFYUI_PATH", COMFYUI_PATH)     # the test modules and the server harness read it
SCENES = os.environ.get("BAS_SHARED_SCENES") or os.path.join(SHARED, "scenes")
#: set by .ci/run: a missing requirement fails the run instead of skipping the module
REQUIRED = os.environ.get("BAS_REQUIRE_COMFYUI", "") not in ("", "0")
CHROMIUM = os.environ.get("BAS_CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = os.path.join(TESTS, "browser", "node_modules", "playwright-core", "package.json")

NODE_IDS = ["MaskedConceptLoader", "BreakASceneTrainer", "ConceptPackLoader", "HandleInjector",
            "ConceptPromptEncoder", "ConceptPackExport"]


def _comfy_reason() -> str | None:
    if not os.path.isfile(os.path.join(COMFYUI_PATH, "comfy", "sd.py")):
        return (f"no ComfyUI checkout at COMFYUI_PATH={COMFYUI_PATH!r} (set COMFYUI_PATH, or put the pinned tree at "
                "../shared/comfyui)")
    return None


SKIP_REASON = _comfy_reason()

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

        import aiohttp  # noqa: F401  (ComfyUI's server library; the websocket client of the server tests)
        import utils.extra_config  # noqa: F401  (ComfyUI's utils/ package, before anything shadows `utils`)
        import comfy.cli_args

        comfy.cli_args.args.cpu = comfy.cli_args.args.cpu or not torch.cuda.is_available()
        import comfy.model_management  # noqa: F401
    except ImportError as exc:  # wrong interpreter
        SKIP_REASON = (f"ComfyUI cannot be imported with {sys.executable} ({exc}); run these tests with ComfyUI's "
                       "venv python (../shared/tools/comfyui-venv VENV_DIR builds it)")


def _scenes_reason() -> str | None:
    if not os.path.isdir(os.path.join(SCENES, "creature")):
        return f"the shared test scenes are missing ({SCENES}/creature; set BAS_SHARED_SCENES)"
    return None


def _browser_reason() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; or set BAS_CHROMIUM)"
    if shutil.which("node") is None:
        return "no node on PATH (the browser tests drive Chromium with playwright-core from node)"
    if not os.path.isfile(PLAYWRIGHT):
        return "playwright-core is not installed (cd tests/browser && npm install)"
    return None


def extra_needs(module_name: str) -> tuple:
    """What a module needs beyond ComfyUI itself: the server and browser tests feed the shared scenes to a
    server (test_server.py, test_sdxl_server.py, ...); the browser tests need Chromium and playwright-core."""
    needs = ()
    if "server" in module_name or "browser" in module_name:
        needs += (_scenes_reason,)
    if "browser" in module_name:
        needs += (_browser_reason,)
    return needs


def unavailable_reason(module_name: str) -> str | None:
    """Why the ComfyUI test module `module_name` cannot run here (None: it can)."""
    if SKIP_REASON is not None:
        return SKIP_REASON
    for check in extra_needs(module_name):
        reason = check()
        if reason:
            return reason
    return None


class _UnavailableModule(pytest.Module):
    """A test module whose requirements are missing: skipped with the reason, or an error when required."""

    reason = ""

    def collect(self):
        if REQUIRED:
            pytest.fail(f"{self.reason} (BAS_REQUIRE_COMFYUI is set: the ComfyUI tests must run here)",
                        pytrace=False)
        pytest.skip(self.reason)


def pytest_pycollect_makemodule(module_path, parent):
    if not module_path.name.startswith("test_"):
        return None
    reason = unavailable_reason(module_path.name)
    if reason is None:
        return None
    module = _UnavailableModule.from_parent(parent, path=module_path)
    module.reason = reason
    return module


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
    # Only the constant-only modules (no torch, no diffusers) may load with the pack; the rest must wait.
    light = {f"{package}.bas_engine.{name}" for name in ("families", "config", "errors")} | {f"{package}.bas_engine"}
    engine_loaded = sorted(m for m in sys.modules if m.startswith(package + ".bas_engine") and m not in light)
    return SimpleNamespace(classes=classes, package=package, comfy_nodes=comfy_nodes, engine_at_load=engine_loaded,
                           module=lambda name: importlib.import_module(f"{package}.{name}"))


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
