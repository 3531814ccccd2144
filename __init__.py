"""ComfyUI entry point of the Break-A-Scene node pack (V3 nodes, see docs/NODES.md).

ComfyUI imports this folder as a package named after it; everything below is relative to it. Only ComfyUI's
own modules are imported here: the engine (diffusers, transformers) is loaded when a node first runs.
"""
WEB_DIRECTORY = "./web"

try:
    import folder_paths  # noqa: F401  (only inside ComfyUI)
except ImportError:      # imported outside ComfyUI (packaging tools, linters): nothing to register
    folder_paths = None

if folder_paths is not None:
    from .nodes.common import register_model_folder
    from .nodes.routes import register_routes

    register_model_folder()
    register_routes()          # read-only pack metadata for the page (nodes/routes.py)


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import NODE_LIST

    class BreakASceneExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODE_LIST)

    return BreakASceneExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
