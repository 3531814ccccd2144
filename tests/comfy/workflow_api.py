"""Example workflows as a server runs them: a frontend workflow (example_workflows/*.json, format version 0.4)
converted to the API format that POST /prompt takes, using the server's /object_info for the widget order
(``ui_to_api``); checks of an API graph (``api_problems``) and of a workflow's UI schema (``ui_schema_problems``)
against what the frontend and the server accept; small edits of API graphs (``patch_inputs``, ``clone``).

Plain data in, plain data out: no ComfyUI import and no server (``server_harness`` runs the server and re-exports
these names).
"""
from __future__ import annotations

import copy
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE_WORKFLOWS = os.path.join(REPO, "example_workflows")

CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: frontend-only node types (no server class)
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


class ConversionError(ValueError):
    pass


def _options(spec) -> dict:
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    """True when the frontend shows this /object_info input as a widget (it stores a widgets_values entry)."""
    kind = spec[0]
    if _options(spec).get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_KINDS


def has_control_widget(name: str, spec) -> bool:
    """The frontend adds a "control after generate" widget (one more widgets_values entry) after INT/COMBO
    widgets with control_after_generate, and after INT widgets named seed / noise_seed (legacy convention)."""
    opts = _options(spec)
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, required) in the node's input order (required first, then optional)."""
    out = []
    order = info.get("input_order") or {}
    for section, required in (("required", True), ("optional", False)):
        specs = info.get("input", {}).get(section, {}) or {}
        names = order.get(section) or list(specs)
        out.extend((name, specs[name], required) for name in names if name in specs)
    return out


def widget_inputs(info: dict) -> list[tuple[str, list]]:
    return [(name, spec) for name, spec, _req in ordered_inputs(info) if is_widget(spec)]


def _links_by_id(workflow: dict) -> dict[int, tuple[int, int, int, int, str]]:
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                 link.get("type"))
        else:
            links[link[0]] = tuple(link[1:6])
    return links


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Frontend workflow -> API prompt {node_id: {"class_type", "inputs", "_meta": {"title"}}}.

    Widgets take widgets_values in the order of the node's widget inputs (required then optional, per
    /object_info input_order), skipping the extra "control after generate" value after seed-like widgets and
    ignoring trailing values of frontend-only widgets (the image "upload" button).  A linked input becomes
    [origin_id_str, origin_slot] (through Reroute nodes).  Notes are dropped, so are muted nodes (mode 2);
    bypassed nodes (mode 4) are not supported."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = _links_by_id(workflow)
    api: dict[str, dict] = {}

    def origin(link_id: int) -> tuple[int, int] | None:
        from_id, from_slot, *_ = links[link_id]
        source = nodes.get(from_id)
        if source is None:
            raise ConversionError(f"link {link_id} comes from missing node {from_id}")
        if source["type"] == "Reroute":
            upstream = (source.get("inputs") or [{}])[0].get("link")
            return None if upstream is None else origin(upstream)
        if source.get("mode", 0) == 2:
            return None
        return from_id, from_slot

    for node_id, node in sorted(nodes.items()):
        node_type = node["type"]
        where = f"node {node_id} ({node_type})"
        if node_type in VIRTUAL_NODES and node_type not in object_info:
            continue
        mode = node.get("mode", 0)
        if mode == 2:
            continue
        if mode == 4:
            raise ConversionError(f"{where} is bypassed; bypass is not supported by this converter")
        info = object_info.get(node_type)
        if info is None:
            raise ConversionError(f"{where}: unknown node type (not in /object_info)")
        inputs: dict = {}
        values = node.get("widgets_values", [])
        if isinstance(values, dict):
            for name, _spec in widget_inputs(info):
                if name in values:
                    inputs[name] = values[name]
        else:
            position = 0
            for name, spec in widget_inputs(info):
                if position >= len(values):
                    break
                inputs[name] = values[position]
                position += 1
                if has_control_widget(name, spec) and position < len(values) and (
                        values[position] in CONTROL_VALUES or isinstance(values[position], bool)):
                    position += 1
        for entry in node.get("inputs", []) or []:
            link_id = entry.get("link")
            if link_id is None:
                continue
            if link_id not in links:
                raise ConversionError(f"{where}: input {entry.get('name')!r} uses unknown link {link_id}")
            source = origin(link_id)
            if source is None:
                inputs.pop(entry["name"], None)
                continue
            inputs[entry["name"]] = [str(source[0]), source[1]]
        api[str(node_id)] = {"class_type": node_type, "inputs": inputs,
                             "_meta": {"title": node.get("title") or info.get("display_name") or node_type}}
    return api


def api_problems(api: dict, object_info: dict, *, check_combos: bool = False) -> list[str]:
    """What ComfyUI's validation would refuse, found statically: unknown node types, missing required inputs,
    links to missing nodes or output slots, link types that don't match the input type, and (optionally)
    COMBO values that are not among the options."""
    problems = []
    for node_id, node in api.items():
        info = object_info.get(node["class_type"])
        where = f"node {node_id} ({node['class_type']})"
        if info is None:
            problems.append(f"{where}: unknown node type")
            continue
        specs = {name: (spec, req) for name, spec, req in ordered_inputs(info)}
        for name, (spec, required) in specs.items():
            if required and name not in node["inputs"]:
                problems.append(f"{where}: required input {name!r} missing")
        for name, value in node["inputs"].items():
            if name not in specs:
                problems.append(f"{where}: input {name!r} is not an input of this node")
                continue
            spec = specs[name][0]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source = api.get(value[0])
                if source is None:
                    problems.append(f"{where}: input {name!r} links to missing node {value[0]}")
                    continue
                out_types = object_info.get(source["class_type"], {}).get("output", [])
                if not 0 <= value[1] < len(out_types):
                    problems.append(f"{where}: input {name!r} links to missing output {value[1]} of node {value[0]}")
                    continue
                want, got = spec[0], out_types[value[1]]
                if isinstance(want, list):
                    want = "COMBO"
                if isinstance(got, list):
                    got = "COMBO"
                if "*" not in (want, got) and set(str(want).split(",")).isdisjoint(str(got).split(",")):
                    problems.append(f"{where}: input {name!r} wants {want}, linked to {got}")
            elif check_combos:
                choices = spec[0] if isinstance(spec[0], list) else _options(spec).get("options")
                if choices is not None and value not in choices:
                    problems.append(f"{where}: {name}={value!r} is not one of {choices[:8]}")
    return problems


_CNR_ID = __import__("re").compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9._-]*[a-zA-Z0-9])?$")


def ui_schema_problems(workflow: dict) -> list[str]:
    """The frontend's load-time schema for a version-0.4 workflow (zComfyWorkflow / zComfyNode / zComfyLink in
    ComfyUI_frontend's workflowSchema, as shipped in comfyui-frontend-package 1.27), plus graph consistency:
    unique ids, link ids recorded on both ends, last_node_id / last_link_id."""
    problems = []
    num = (int, float)

    def vec2(value) -> bool:
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, num) for v in value)

    for key, kind in (("last_node_id", (int, str)), ("last_link_id", num), ("nodes", list), ("links", list),
                      ("version", num)):
        if not isinstance(workflow.get(key), kind):
            problems.append(f"top level: {key} missing or not {kind}")
    if problems:
        return problems
    ids = [n.get("id") for n in workflow["nodes"]]
    if len(set(ids)) != len(ids):
        problems.append("duplicate node ids")
    by_id = {n.get("id"): n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        where = f"node {node.get('id')} ({node.get('type')})"
        for key, ok in (("id", lambda v: isinstance(v, (int, str))), ("type", lambda v: isinstance(v, str)),
                        ("pos", vec2), ("size", vec2), ("flags", lambda v: isinstance(v, dict)),
                        ("order", lambda v: isinstance(v, num)), ("mode", lambda v: isinstance(v, num)),
                        ("properties", lambda v: isinstance(v, dict))):
            if key not in node or not ok(node[key]):
                problems.append(f"{where}: {key} missing or malformed")
        cnr = (node.get("properties") or {}).get("cnr_id")
        if cnr is not None and not (_CNR_ID.match(cnr) and len(cnr) <= 100):
            problems.append(f"{where}: cnr_id {cnr!r} is not a registry id")
        for slot in node.get("inputs") or []:
            if not isinstance(slot.get("name"), str) or "type" not in slot or not (
                    slot.get("link") is None or isinstance(slot.get("link"), int)):
                problems.append(f"{where}: malformed input {slot}")
        for slot in node.get("outputs") or []:
            if not isinstance(slot.get("name"), str) or "type" not in slot or not (
                    slot.get("links") is None or isinstance(slot.get("links"), list)):
                problems.append(f"{where}: malformed output {slot}")
        values = node.get("widgets_values")
        if values is not None and not isinstance(values, (list, dict)):
            problems.append(f"{where}: widgets_values must be a list or an object")
    link_ids = []
    for link in workflow["links"]:
        if not (isinstance(link, list) and len(link) == 6 and isinstance(link[0], int)):
            problems.append(f"malformed link {link}")
            continue
        link_id, src, src_slot, dst, dst_slot, _kind = link
        link_ids.append(link_id)
        if src not in by_id or dst not in by_id:
            problems.append(f"link {link_id}: missing node")
            continue
        outputs = by_id[src].get("outputs") or []
        inputs = by_id[dst].get("inputs") or []
        if not (0 <= src_slot < len(outputs)) or link_id not in (outputs[src_slot].get("links") or []):
            problems.append(f"link {link_id}: not recorded on output {src_slot} of node {src}")
        if not (0 <= dst_slot < len(inputs)) or inputs[dst_slot].get("link") != link_id:
            problems.append(f"link {link_id}: not recorded on input {dst_slot} of node {dst}")
    if len(set(link_ids)) != len(link_ids):
        problems.append("duplicate link ids")
    numeric_ids = [i for i in ids if isinstance(i, int)]
    if numeric_ids and workflow["last_node_id"] < max(numeric_ids):
        problems.append("last_node_id is below the largest node id")
    if link_ids and workflow["last_link_id"] < max(link_ids):
        problems.append("last_link_id is below the largest link id")
    return problems


def load_workflow(name: str) -> dict:
    with open(os.path.join(EXAMPLE_WORKFLOWS, f"{name}.json"), encoding="utf-8") as fh:
        return json.load(fh)


def nodes_of(api: dict, class_type: str) -> list[dict]:
    return [node for node in api.values() if node["class_type"] == class_type]


def patch_inputs(api: dict, class_type: str, **values) -> dict:
    """Set widget values on every node of class_type (in place); returns api."""
    for node in nodes_of(api, class_type):
        node["inputs"].update(values)
    return api


def clone(api: dict) -> dict:
    return copy.deepcopy(api)
