"""The engine is a leaf with no import cycles, lazy imports included (read from the source, not from sys.modules)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "bas_engine")
#: what the engine must never import: the toy world, the node pack, ComfyUI and its top-level modules
FORBIDDEN = ("bas_toyworld", "nodes", "comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution")


def _imports(path: str) -> list[tuple[str, int]]:
    """Every import in the file, at any depth (inside functions too): (absolute module name, line)."""
    module = "bas_engine." + os.path.splitext(os.path.relpath(path, ENGINE))[0].replace(os.sep, ".")
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
                # `from . import x` imports the submodule x
                found += [(f"{name}.{a.name}" if not node.module else name, node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
    return found


def _engine_files() -> dict[str, str]:
    files = {}
    for folder, _, names in os.walk(ENGINE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = "bas_engine." + os.path.splitext(os.path.relpath(path, ENGINE))[0].replace(os.sep, ".")
                files[module.removesuffix(".__init__")] = path
    return files


def test_engine_imports_nothing_of_the_toy_world_the_nodes_or_comfyui():
    offenders = [f"{os.path.relpath(path, ROOT)}:{line} imports {name}"
                 for path in _engine_files().values() for name, line in _imports(path)
                 if name.split(".")[0] in FORBIDDEN]
    assert not offenders, "\n".join(offenders)


def test_engine_has_no_import_cycle():
    files = _engine_files()
    graph = {module: sorted({name for name, _ in _imports(path) if name in files and name != module})
             for module, path in files.items()}
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The scan finds an import inside a function and resolves relative imports (so the tests above can fail)."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from .models import load_model\n    import bas_toyworld.demo\n")
    global ENGINE
    saved, ENGINE = ENGINE, str(tmp_path)
    try:
        names = [name for name, _ in _imports(str(source))]
    finally:
        ENGINE = saved
    assert names == ["bas_engine.models", "bas_toyworld.demo"]
