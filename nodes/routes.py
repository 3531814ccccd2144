"""Read-only server routes of the pack: concept-pack metadata for the page (the prompt encoder's handle chips).

    GET /break_a_scene/packs            -> {"packs": ["creature.safetensors", ...]}
    GET /break_a_scene/packs/{name}     -> {"name", "file", "mode", "family", "concepts": [{token, name, color}],
                                            "losses"}

``name`` is a pack's file name with or without ``.safetensors`` ("creature", "creature.safetensors"). It is only
ever compared with the names ``folder_paths`` lists for the break_a_scene folders: a request string never
becomes a path, so ``../``, absolute names, sub-folders or anything else not in that list is refused (400 when it
is not a plain pack name, 404 when no such pack is listed). Only the safetensors header is read.
"""
from __future__ import annotations

import logging
import os
import re
import sys

from .common import PACK_FOLDER

ROUTE = "/break_a_scene/packs"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.safetensors)?$")

log = logging.getLogger("break_a_scene")


def pack_summary(name: str) -> tuple[int, dict]:
    """(HTTP status, JSON body) for GET /break_a_scene/packs/{name}."""
    import folder_paths

    from ..bas_engine.errors import BASError
    from ..bas_engine.pack import read_pack_meta
    from .live import concepts_info

    if not isinstance(name, str) or not _PLAIN_NAME.match(name):
        return 400, {"error": f"not a concept pack name: {name!r} (letters, digits, _ and -, optionally "
                              ".safetensors; packs are looked up in the break_a_scene folders only)"}
    file_name = name if name.endswith(".safetensors") else name + ".safetensors"
    if file_name not in folder_paths.get_filename_list(PACK_FOLDER):
        return 404, {"error": f"no concept pack {file_name!r} in the break_a_scene folders"}
    path = folder_paths.get_full_path(PACK_FOLDER, file_name)
    try:
        meta = read_pack_meta(path)
    except BASError as exc:
        return 422, {"error": str(exc)}
    tokens, names = list(meta.get("tokens") or []), list(meta.get("names") or [])
    return 200, {"name": os.path.splitext(file_name)[0], "file": file_name, "mode": meta.get("mode"),
                 "family": meta.get("family"), "concepts": concepts_info(tokens, names),
                 "losses": meta.get("losses") or {}}


def pack_list() -> dict:
    import folder_paths

    return {"packs": sorted(folder_paths.get_filename_list(PACK_FOLDER))}


def register_routes() -> bool:
    """Add the routes to ComfyUI's running server (False when there is none, e.g. nodes loaded by tests)."""
    module = sys.modules.get("server")
    server = getattr(getattr(module, "PromptServer", None), "instance", None)
    routes = getattr(server, "routes", None)
    if routes is None:
        return False
    from aiohttp import web

    @routes.get(ROUTE)
    async def list_packs(request):
        return web.json_response(pack_list())

    @routes.get(ROUTE + "/{name}")
    async def get_pack(request):
        status, body = pack_summary(request.match_info.get("name", ""))
        return web.json_response(body, status=status)

    return True
