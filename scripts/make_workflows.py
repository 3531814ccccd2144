#!/usr/bin/env python3
"""Build example_workflows/*.json (ComfyUI frontend "workflow" format, version 0.4) from compact descriptions.

    python scripts/make_workflows.py            # (re)write example_workflows/
    python scripts/make_workflows.py --check    # exit 1 if a file differs from what this script writes

ComfyUI serves a custom node pack's example_workflows/*.json in its template browser
(GET /workflow_templates, files under /api/workflow_templates/<pack folder>/).  The files are what a user gets
from "Save" in the UI: nodes with id/type/pos/size/inputs/outputs/widgets_values, and links as
[id, from_node, from_slot, to_node, to_slot, type].  Only the Python standard library is used.

NODE_SPECS below holds, for every node type used, its inputs in ComfyUI's input order (required, then
optional) and its outputs.  tests/comfy/test_server.py checks the table against a running server's
/object_info, so a renamed or reordered input shows up as a test failure, not as a broken template.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "example_workflows")
if ROOT not in sys.path:      # appended: in ComfyUI's tests `nodes` must stay ComfyUI's nodes.py, not ours
    sys.path.append(ROOT)
from bas_engine.config import TrainConfig  # noqa: E402  (plain data: no torch)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}          # INT widgets the frontend gives a "control after generate" widget

# ----------------------------------------------------------------------------------------------- node table
# type -> (inputs [(name, type, optional)], outputs [(name, type)]); type "COMBO" for a list of choices.
# Inputs of a widget type become widgets (in this order); the others become sockets.
_MASKS = [(f"mask_{i}", "MASK", True) for i in range(8)]
NODE_SPECS: dict[str, tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]] = {
    # ---- Break-A-Scene (docs/NODES.md)
    "MaskedConceptLoader": (
        [("image", "IMAGE", False), ("concept_names", "STRING", False), ("initializers", "STRING", False),
         ("masks", "MASK", True)] + _MASKS,
        [("scene", "BAS_SCENE"), ("preview", "IMAGE")]),
    "BreakASceneTrainer": (
        [("model", "MODEL", False), ("clip", "CLIP", False), ("vae", "VAE", False), ("scene", "BAS_SCENE", False),
         ("pack_name", "STRING", False), ("phase1_steps", "INT", False), ("phase2_steps", "INT", False),
         ("phase1_lr", "FLOAT", False), ("phase2_lr", "FLOAT", False), ("mode", "COMBO", False),
         ("lora_rank", "INT", False), ("train_text_encoder", "BOOLEAN", False),
         ("attention_loss_weight", "FLOAT", False), ("masked_loss", "BOOLEAN", False),
         ("union_sampling", "BOOLEAN", False), ("resolution", "INT", False), ("seed", "INT", False),
         ("retrain", "BOOLEAN", False)],
        [("concepts", "BAS_CONCEPTS"), ("preview", "IMAGE")]),
    "ConceptPackLoader": ([("pack_name", "COMBO", False)], [("concepts", "BAS_CONCEPTS")]),
    "HandleInjector": (
        [("model", "MODEL", False), ("clip", "CLIP", False), ("concepts", "BAS_CONCEPTS", False),
         ("strength_model", "FLOAT", False), ("strength_clip", "FLOAT", False)],
        [("model", "MODEL"), ("clip", "CLIP")]),
    "ConceptPromptEncoder": (
        [("clip", "CLIP", False), ("concepts", "BAS_CONCEPTS", False), ("text", "STRING", False),
         ("guidance", "FLOAT", False)],
        [("conditioning", "CONDITIONING")]),
    "ConceptPackExport": (
        [("concepts", "BAS_CONCEPTS", False), ("name", "STRING", False)],
        [("lora_name", "STRING"), ("embedding_names", "STRING")]),
    # ---- ComfyUI core
    "LoadImage": ([("image", "COMBO", False)], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "LoadImageMask": ([("image", "COMBO", False), ("channel", "COMBO", False)], [("MASK", "MASK")]),
    "CheckpointLoaderSimple": ([("ckpt_name", "COMBO", False)],
                               [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("text", "STRING", False), ("clip", "CLIP", False)], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([("width", "INT", False), ("height", "INT", False), ("batch_size", "INT", False)],
                         [("LATENT", "LATENT")]),
    "KSampler": (
        [("model", "MODEL", False), ("seed", "INT", False), ("steps", "INT", False), ("cfg", "FLOAT", False),
         ("sampler_name", "COMBO", False), ("scheduler", "COMBO", False), ("positive", "CONDITIONING", False),
         ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False), ("denoise", "FLOAT", False)],
        [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], [("IMAGE", "IMAGE")]),
    "VAEEncode": ([("pixels", "IMAGE", False), ("vae", "VAE", False)], [("LATENT", "LATENT")]),
    "SetLatentNoiseMask": ([("samples", "LATENT", False), ("mask", "MASK", False)], [("LATENT", "LATENT")]),
    "GrowMask": ([("mask", "MASK", False), ("expand", "INT", False), ("tapered_corners", "BOOLEAN", False)],
                 [("MASK", "MASK")]),
    "ImageCompositeMasked": (
        [("destination", "IMAGE", False), ("source", "IMAGE", False), ("x", "INT", False), ("y", "INT", False),
         ("resize_source", "BOOLEAN", False), ("mask", "MASK", True)],
        [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE", False), ("filename_prefix", "STRING", False)], []),
    "PreviewImage": ([("images", "IMAGE", False)], []),
    "ControlNetLoader": ([("control_net_name", "COMBO", False)], [("CONTROL_NET", "CONTROL_NET")]),
    "ControlNetApplyAdvanced": (
        [("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False),
         ("control_net", "CONTROL_NET", False), ("image", "IMAGE", False), ("strength", "FLOAT", False),
         ("start_percent", "FLOAT", False), ("end_percent", "FLOAT", False), ("vae", "VAE", True)],
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "Canny": ([("image", "IMAGE", False), ("low_threshold", "FLOAT", False), ("high_threshold", "FLOAT", False)],
              [("IMAGE", "IMAGE")]),
    "UNETLoader": ([("unet_name", "COMBO", False), ("weight_dtype", "COMBO", False)], [("MODEL", "MODEL")]),
    "DualCLIPLoader": (
        [("clip_name1", "COMBO", False), ("clip_name2", "COMBO", False), ("type", "COMBO", False),
         ("device", "COMBO", True)],
        [("CLIP", "CLIP")]),
    "VAELoader": ([("vae_name", "COMBO", False)], [("VAE", "VAE")]),
    "EmptySD3LatentImage": ([("width", "INT", False), ("height", "INT", False), ("batch_size", "INT", False)],
                            [("LATENT", "LATENT")]),
    "LoraLoader": (
        [("model", "MODEL", False), ("clip", "CLIP", False), ("lora_name", "COMBO", False),
         ("strength_model", "FLOAT", False), ("strength_clip", "FLOAT", False)],
        [("MODEL", "MODEL"), ("CLIP", "CLIP")]),
}
#: this pack's node types (their nodes carry the pack's registry id, cnr_id)
PACK_NODES = {"MaskedConceptLoader", "BreakASceneTrainer", "ConceptPackLoader", "HandleInjector",
              "ConceptPromptEncoder", "ConceptPackExport"}
#: room for the frontend-only widgets of web/: the trainer's live view, the prompt encoder's handle chips
FRONTEND_WIDGET_HEIGHT = {"BreakASceneTrainer": 320, "ConceptPromptEncoder": 34}
#: nodes whose image COMBO gets the frontend's "upload" button widget (its value is stored last)
UPLOAD_WIDGET = {"LoadImage", "LoadImageMask"}
#: frontend-only nodes (no server class): dropped when converting to the API format
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}

NODE_COLORS = {"CLIPTextEncode": ("#223", "#335"), "ConceptPromptEncoder": ("#232", "#353"),
               "BreakASceneTrainer": ("#323", "#535"), "Note": ("#432", "#653")}


def widget_names(node_type: str) -> list[str]:
    inputs, _ = NODE_SPECS[node_type]
    return [name for name, kind, _opt in inputs if kind in WIDGET_TYPES]


# ----------------------------------------------------------------------------------------------- builder

class Ref:
    """An output slot of a node in a workflow being built."""

    def __init__(self, node: "Node", slot: int):
        self.node, self.slot = node, slot


class Node:
    def __init__(self, wf: "Workflow", node_id: int, node_type: str, title: str | None, widgets: dict,
                 links: dict, seed_control: str, col: int, width: int | None, extra_height: int):
        self.wf, self.id, self.type = wf, node_id, node_type
        self.title, self.widgets, self.links = title, widgets, links
        self.seed_control, self.col, self.width, self.extra_height = seed_control, col, width, extra_height

    def __getitem__(self, slot: int) -> Ref:
        outputs = NODE_SPECS[self.type][1]
        if not 0 <= slot < len(outputs):
            raise IndexError(f"{self.type} has {len(outputs)} outputs, asked for slot {slot}")
        return Ref(self, slot)


class Workflow:
    COL_WIDTH = 400
    GAP = 40

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[Node] = []
        self.notes: list[tuple[int, str, int, int]] = []      # (id, text, col, height)
        self.groups: list[dict] = []
        self.vae: Ref | None = None                          # the VAE output used by _generate_tail
        self._next_id = 1

    def _new_id(self) -> int:
        node_id = self._next_id
        self._next_id += 1
        return node_id

    def add(self, node_type: str, *, title: str | None = None, col: int = 0, seed_control: str = "fixed",
            node_width: int | None = None, extra_height: int = 0, **kwargs) -> Node:
        """kwargs: widget values by input name, or a Ref for a socket input."""
        if node_type not in NODE_SPECS:
            raise KeyError(f"{node_type} is not in NODE_SPECS")
        inputs, _ = NODE_SPECS[node_type]
        names = {n for n, _k, _o in inputs}
        unknown = set(kwargs) - names
        if unknown:
            raise KeyError(f"{node_type} has no input(s) {sorted(unknown)}")
        widgets = {k: v for k, v in kwargs.items() if not isinstance(v, Ref)}
        links = {k: v for k, v in kwargs.items() if isinstance(v, Ref)}
        missing = [n for n in widget_names(node_type) if n not in widgets]
        if missing:
            raise KeyError(f"{node_type}: give a value for widget(s) {missing}")
        for name, kind, optional in inputs:
            if kind not in WIDGET_TYPES and not optional and name not in links:
                raise KeyError(f"{node_type}: required input {name!r} is not linked")
        node = Node(self, self._new_id(), node_type, title, widgets, links, seed_control, col, node_width,
                    extra_height)
        self.nodes.append(node)
        return node

    def note(self, text: str, *, col: int = 0, height: int = 220) -> None:
        self.notes.append((self._new_id(), text.strip(), col, height))

    # -------------------------------------------------------------------------------------------- output

    @staticmethod
    def _height(node: Node) -> int:
        inputs, outputs = NODE_SPECS[node.type]
        sockets = [i for i in inputs if i[1] not in WIDGET_TYPES]
        height = 30 + 22 * max(len(sockets), len(outputs), 1)
        for name, kind, _opt in inputs:
            if kind in WIDGET_TYPES:
                multiline = kind == "STRING" and name in ("text",)
                height += 110 if multiline else 26
                if name in SEED_NAMES and kind == "INT":
                    height += 26
        if node.type in UPLOAD_WIDGET:
            height += 26 + 250                     # upload button + image preview
        if node.type in ("SaveImage", "PreviewImage"):
            height += 250
        return height + FRONTEND_WIDGET_HEIGHT.get(node.type, 0) + node.extra_height

    def _order(self) -> dict[int, int]:
        """Execution order the frontend stores ("order"): a topological sort, notes first."""
        deps = {n.id: {ref.node.id for ref in n.links.values()} for n in self.nodes}
        order, done = {}, set()
        for note_id, *_ in self.notes:
            order[note_id] = len(order)
        while len(done) < len(self.nodes):
            ready = [n.id for n in self.nodes if n.id not in done and deps[n.id] <= done]
            if not ready:
                raise ValueError(f"{self.name}: cycle in the graph")
            for node_id in ready:
                order[node_id] = len(order)
                done.add(node_id)
        return order

    def to_json(self) -> dict:
        order = self._order()
        col_y: dict[int, int] = {}
        out_nodes = []
        links = []
        outgoing: dict[tuple[int, int], list[int]] = {}

        def place(col: int, height: int) -> list[int]:
            y = col_y.get(col, 40)
            col_y[col] = y + height + self.GAP
            return [40 + col * self.COL_WIDTH, y]

        for note_id, text, col, height in self.notes:
            out_nodes.append({
                "id": note_id, "type": "Note", "pos": place(col, height), "size": [360, height], "flags": {},
                "order": order[note_id], "mode": 0, "inputs": [], "outputs": [], "title": "Read me",
                "properties": {"text": ""}, "widgets_values": [text],
                "color": NODE_COLORS["Note"][0], "bgcolor": NODE_COLORS["Note"][1]})

        # links in the order of their target nodes and input slots: stable ids
        for node in self.nodes:
            inputs, _ = NODE_SPECS[node.type]
            sockets = [i for i in inputs if i[1] not in WIDGET_TYPES]
            for slot, (name, kind, _opt) in enumerate(sockets):
                ref = node.links.get(name)
                if ref is None:
                    continue
                link_id = len(links) + 1
                links.append([link_id, ref.node.id, ref.slot, node.id, slot, kind])
                outgoing.setdefault((ref.node.id, ref.slot), []).append(link_id)

        link_to: dict[tuple[int, int], int] = {(lk[3], lk[4]): lk[0] for lk in links}
        for node in self.nodes:
            inputs, outputs = NODE_SPECS[node.type]
            sockets = [i for i in inputs if i[1] not in WIDGET_TYPES]
            ui_inputs = []
            for slot, (name, kind, optional) in enumerate(sockets):
                entry = {"name": name, "type": kind, "link": link_to.get((node.id, slot))}
                if optional:
                    entry["shape"] = 7                  # the frontend draws optional sockets hollow
                ui_inputs.append(entry)
            ui_outputs = []
            for slot, (name, kind) in enumerate(outputs):
                ids = outgoing.get((node.id, slot))
                ui_outputs.append({"name": name, "type": kind, "links": ids if ids else None, "slot_index": slot})
            values = []
            for name in widget_names(node.type):
                values.append(node.widgets[name])
                if name in SEED_NAMES and dict((n, k) for n, k, _ in inputs)[name] == "INT":
                    values.append(node.seed_control)
            if node.type in UPLOAD_WIDGET:
                values.append("image")
            height = self._height(node)
            width = node.width or (380 if node.type in ("CLIPTextEncode", "ConceptPromptEncoder",
                                                        "BreakASceneTrainer") else 340)
            entry = {"id": node.id, "type": node.type, "pos": place(node.col, height), "size": [width, height],
                     "flags": {}, "order": order[node.id], "mode": 0, "inputs": ui_inputs, "outputs": ui_outputs}
            if node.title:
                entry["title"] = node.title
            entry["properties"] = {"Node name for S&R": node.type}
            if node.type in PACK_NODES:
                entry["properties"]["cnr_id"] = "comfyui-break-a-scene"
            entry["widgets_values"] = values
            if node.type in NODE_COLORS:
                entry["color"], entry["bgcolor"] = NODE_COLORS[node.type]
            out_nodes.append(entry)

        out_nodes.sort(key=lambda n: n["id"])
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-break-a-scene/example_workflows/{self.name}")),
            "revision": 0,
            "last_node_id": max(n["id"] for n in out_nodes),
            "last_link_id": len(links),
            "nodes": out_nodes,
            "links": links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.65, "offset": [40, 40]}},
            "version": 0.4,
        }


# ----------------------------------------------------------------------------------------------- workflows

SD21 = "v2-1_512-ema-pruned.safetensors"                # the paper's model (Stable Diffusion 2.1-base)
SD15 = "v1-5-pruned-emaonly-fp16.safetensors"
CANNY = "control_v11p_sd15_canny_fp16.safetensors"
NEGATIVE = "blurry, low quality, deformed, watermark, text"
NAMES = "figurine, bowl, stone"
PACK = "creature"
SAMPLER = dict(steps=30, cfg=7.5, sampler_name="dpmpp_2m", scheduler="karras")
#: the Concept Prompt Encoder's guidance (read by Flux dev only): TrainConfig's, the value packs train with
GUIDANCE = TrainConfig().guidance

#: the trainer's settings: TrainConfig's defaults, the paper's at 512 px (an optional float, None = auto, is the
#: node's 0); read from the engine, never copied
TRAINER_DEFAULTS = {**{name: 0.0 if getattr(TrainConfig(), name) is None else getattr(TrainConfig(), name)
                       for name, _, _ in NODE_SPECS["BreakASceneTrainer"][0]
                       if name in TrainConfig.__dataclass_fields__},
                    "retrain": False}

COMMON_NOTE = """
Handles: every concept gets a token, <asset0>, <asset1>, ... in mask order; in the Concept Prompt Encoder you can
also write the concept name in angle brackets (<figurine>). Weights work as usual: (<bowl>:1.2).
Packs live in models/break_a_scene/ (one .safetensors per scene: handles + LoRA + settings)."""


def _generate_tail(wf: Workflow, model: Ref, clip: Ref, concepts: Ref, text: str, *, col: int,
                   prefix: str, size: int = 512, negative: str = NEGATIVE, latent_node: str = "EmptyLatentImage",
                   sampler_settings: dict | None = None) -> None:
    """Handle prompt + negative + empty latent -> KSampler -> VAEDecode -> SaveImage (needs wf.vae)."""
    pos = wf.add("ConceptPromptEncoder", title="Prompt with handles (positive)", col=col, clip=clip,
                 concepts=concepts, text=text, guidance=GUIDANCE)
    neg = wf.add("CLIPTextEncode", title="Negative prompt" if negative else "Negative (unused at cfg 1)", col=col,
                 clip=clip, text=negative)
    latent = wf.add(latent_node, col=col, width=size, height=size, batch_size=1)
    sampler = wf.add("KSampler", col=col + 1, seed_control="randomize", model=model, positive=pos[0],
                     negative=neg[0], latent_image=latent[0], seed=42, denoise=1.0, **(sampler_settings or SAMPLER))
    image = wf.add("VAEDecode", col=col + 1, samples=sampler[0], vae=wf.vae)
    wf.add("SaveImage", col=col + 2, images=image[0], filename_prefix=prefix, node_width=420)


def _checkpoint(title: str, name: str):
    """A loader for _extract_graph: Load Checkpoint (MODEL, CLIP, VAE in one file)."""
    def load(wf: Workflow) -> tuple[Ref, Ref, Ref]:
        ckpt = wf.add("CheckpointLoaderSimple", title=title, col=2, ckpt_name=name)
        return ckpt[0], ckpt[1], ckpt[2]
    return load


def _extract_graph(wf: Workflow, load, trainer_title: str, pack: str, settings: dict,
                   export_title: str) -> tuple[Ref, Ref]:
    """The extraction half of the extract-and-generate workflows: the creature scene and its three masks ->
    Masked Concept Loader -> the model (``load(wf)`` adds its loader nodes, returns MODEL, CLIP, VAE) -> Trainer
    (with previews and the export) -> Handle Injector. Returns (trainer, injector); sets wf.vae."""
    image = wf.add("LoadImage", title="Scene image", col=0, image="creature.jpg")
    masks = [wf.add("LoadImageMask", title=f"Mask {i}: {name}", col=1, image=f"creature_mask{i}.png",
                    channel="red")
             for i, name in enumerate(["figurine", "bowl", "stone"])]
    scene = wf.add("MaskedConceptLoader", title="Masked Concept Loader", col=2, image=image[0],
                   concept_names=NAMES, initializers=NAMES,
                   **{f"mask_{i}": m[0] for i, m in enumerate(masks)})
    wf.add("PreviewImage", title="Masks over the image", col=2, images=scene[1])
    model, clip, vae = load(wf)
    wf.vae = vae
    trainer = wf.add("BreakASceneTrainer", title=trainer_title, col=3, model=model, clip=clip, vae=vae,
                     scene=scene[0], pack_name=pack, **settings)
    wf.add("PreviewImage", title="Training preview (attention maps)", col=3, images=trainer[1])
    wf.add("ConceptPackExport", title=export_title, col=3, concepts=trainer[0], name="")
    inject = wf.add("HandleInjector", col=4, model=model, clip=clip, concepts=trainer[0],
                    strength_model=1.0, strength_clip=1.0)
    return trainer, inject


def extract_and_generate() -> Workflow:
    wf = Workflow("extract_and_generate")
    wf.note("""Break-A-Scene: extract several concepts from ONE image, then prompt with them.

1. Load the scene image and one loose mask per concept (white = concept, black = background; LoadImageMask
   reads the RED channel, so ordinary black/white PNGs work; paint new ones with the mask editor).
2. Masked Concept Loader: the concept names (comma-separated, one per mask, in mask order) become handles.
3. Trainer: the paper's settings at 512 px (400 steps handles only at lr 5e-4, then 400 steps handles + LoRA;
   phase2_lr 0 = auto, attention loss 0.01, masked loss, union sampling). It saves the pack to
   models/break_a_scene/<pack_name>.safetensors; the same model + scene + settings loads the saved pack instead
   of training again (retrain = true forces it). Cancel works at any step.
4. Handle Injector applies the pack's LoRA; the Concept Prompt Encoder understands <figurine> / <asset0>.
5. Export Concept Pack writes a LoRA + one embedding per concept for stock nodes (see stock_nodes_only).

Model: the paper used Stable Diffusion 2.1-base (v2-1_512-ema-pruned.safetensors); any SD1.x / SD2.x checkpoint
works. Train on a GPU: on a CPU the 800 steps at 512 px take hours.""" + COMMON_NOTE, height=520)
    trainer, inject = _extract_graph(wf, _checkpoint("Base model (SD 2.1-base, as in the paper)", SD21),
                                     "Break-A-Scene Trainer (paper settings)", PACK, TRAINER_DEFAULTS,
                                     "Export LoRA + embeddings (for stock nodes)")
    _generate_tail(wf, inject[0], inject[1], trainer[0],
                   "an oil painting of <bowl> next to <figurine>, on a wooden table", col=4,
                   prefix="break_a_scene/creature")
    return wf


SDXL = "sd_xl_base_1.0.safetensors"
SDXL_PACK = "creature_xl"
#: the paper's recipe on SDXL at its native 1024 px (the engine turns on gradient checkpointing for SDXL)
SDXL_TRAINER = dict(TRAINER_DEFAULTS, resolution=1024)


def sdxl_extract_and_generate() -> Workflow:
    wf = Workflow("sdxl_extract_and_generate")
    wf.note("""Break-A-Scene on SDXL: extract several concepts from ONE image at 1024 px, then prompt with them.

The same graph as extract_and_generate, on an SDXL checkpoint (SDXL 1.0 base, its fine-tunes, and the distilled
SSD-1B / Segmind Vega / KOALA models ComfyUI detects as SDXL). Every handle gets its own vector in BOTH text
encoders (CLIP-L and OpenCLIP-G); the Concept Prompt Encoder fills both and the pooled output, with SDXL's size
conditioning at 1024 x 1024 (as CLIPTextEncodeSDXL's defaults).

Training: 400 + 400 steps at 1024 px, LoRA rank 16, attention loss on the down/up cross-attention layers at 1/4
of the latent resolution (32 x 32). The LoRA training step of full SDXL at 1024 px fits a 24 GB GPU with bf16
and gradient checkpointing (docs/SDXL.md has the measured peak). Export Concept Pack writes a kohya SDXL LoRA
(lora_unet_ / lora_te1_ / lora_te2_) and one embedding per concept with clip_l and clip_g vectors, for
LoraLoader and embedding:<pack>_<concept> in stock nodes.""" + COMMON_NOTE, height=470)
    trainer, inject = _extract_graph(wf, _checkpoint("Base model (SDXL 1.0 base)", SDXL),
                                     "Break-A-Scene Trainer (SDXL, 1024 px)",
                                     SDXL_PACK, SDXL_TRAINER, "Export SDXL LoRA + embeddings (for stock nodes)")
    _generate_tail(wf, inject[0], inject[1], trainer[0],
                   "an oil painting of <bowl> next to <figurine>, on a wooden table", col=4,
                   prefix="break_a_scene/creature_xl", size=1024)
    return wf


FLUX_UNET = "flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_T5 = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
FLUX_PACK = "creature_flux"
#: the recipe at Flux's native 1024 px (LoRA; a full fine-tune is refused on Flux)
FLUX_TRAINER = dict(TRAINER_DEFAULTS, resolution=1024)
#: how ComfyUI's own Flux dev examples sample: no CFG (the guidance is distilled into the model), euler, simple
FLUX_SAMPLER = dict(steps=20, cfg=1.0, sampler_name="euler", scheduler="simple")


def _flux_loaders(wf: Workflow) -> tuple[Ref, Ref, Ref]:
    """A loader for _extract_graph: Load Diffusion Model + DualCLIPLoader (clip_l + t5xxl, type flux) + Load VAE."""
    unet = wf.add("UNETLoader", title="Flux.1 dev transformer (models/diffusion_models)", col=2,
                  unet_name=FLUX_UNET, weight_dtype="default")
    clip = wf.add("DualCLIPLoader", title="Text encoders: CLIP-L + T5-XXL (models/text_encoders)", col=2,
                  clip_name1=FLUX_CLIP_L, clip_name2=FLUX_T5, type="flux", device="default")
    vae = wf.add("VAELoader", title="Flux VAE (models/vae)", col=2, vae_name=FLUX_VAE)
    return unet[0], clip[0], vae[0]


def flux_extract_and_generate() -> Workflow:
    wf = Workflow("flux_extract_and_generate")
    wf.note("""Break-A-Scene on Flux.1: extract several concepts from ONE image at 1024 px, then prompt with them.

The same graph as extract_and_generate, on Flux.1 dev (or schnell, or a fine-tune) loaded the usual way: Load
Diffusion Model + DualCLIPLoader (clip_l + t5xxl, type flux) + Load VAE. Every handle gets one vector in T5's
embedding table (the tokens the transformer reads) and one in CLIP-L's (its pooled vector); the rest of both
tables stays frozen.

Training, in place on the loaded model: flow matching on the model's own shifted sigmas with the guidance input
at 3.5; the masked loss on the 2x2-patch grid; the attention loss on the joint attention of the double-stream
blocks (image queries -> handle token). Phase 2 is LoRA on the transformer's attention and MLP projections
(mode "full" is refused: 12B parameters). The Concept Prompt Encoder's guidance is FluxGuidance's; sample at
cfg 1 (the negative prompt is then unused).

Memory on paper (docs/FLUX.md, scripts/flux_memory.py): ~34 GB at 1024 px with bf16 weights and gradient
checkpointing (a 40-48 GB GPU); weight_dtype fp8_e4m3fn brings it to ~19 GB, which fits 24 GB, but training
through fp8 weights is not tested yet. Export Concept Pack writes a Flux LoRA (kohya names, for LoraLoader) and
one embedding per concept (t5xxl + clip_l vectors) for embedding:<pack>_<concept>.""" + COMMON_NOTE, height=540)
    trainer, inject = _extract_graph(wf, _flux_loaders, "Break-A-Scene Trainer (Flux, 1024 px)", FLUX_PACK,
                                     FLUX_TRAINER, "Export Flux LoRA + embeddings (for stock nodes)")
    _generate_tail(wf, inject[0], inject[1], trainer[0],
                   "an oil painting of <bowl> next to <figurine>, on a wooden table", col=4,
                   prefix="break_a_scene/creature_flux", size=1024, negative="",
                   latent_node="EmptySD3LatentImage", sampler_settings=FLUX_SAMPLER)
    return wf


def trainer_inputs(workflow: str) -> dict:
    """The Trainer's widget values in an example workflow (pack name included)."""
    if workflow == "sdxl_extract_and_generate":
        return dict(SDXL_TRAINER, pack_name=SDXL_PACK)
    if workflow == "flux_extract_and_generate":
        return dict(FLUX_TRAINER, pack_name=FLUX_PACK)
    return dict(TRAINER_DEFAULTS, pack_name=PACK)


def reuse_saved_pack() -> Workflow:
    wf = Workflow("reuse_saved_pack")
    wf.note("""Generate with a concept pack trained earlier (no training).

Pick the pack in "Load Concept Pack" (files in models/break_a_scene/, e.g. creature.safetensors written by the
extract_and_generate workflow). Use the same checkpoint family the pack was trained on (an SD1.x pack on an SD2.x
checkpoint is refused with a clear error). Strengths below 1 in the Handle Injector weaken the LoRA.""" + COMMON_NOTE,
            height=330)
    ckpt = wf.add("CheckpointLoaderSimple", title="Base model (the one the pack was trained on)", col=0,
                  ckpt_name=SD21)
    wf.vae = ckpt[2]
    pack = wf.add("ConceptPackLoader", title="Load Concept Pack", col=0, pack_name=f"{PACK}.safetensors")
    inject = wf.add("HandleInjector", col=1, model=ckpt[0], clip=ckpt[1], concepts=pack[0],
                    strength_model=1.0, strength_clip=1.0)
    _generate_tail(wf, inject[0], inject[1], pack[0],
                   "a photo of <asset0> sitting inside <asset1> on a sunny beach", col=2,
                   prefix="break_a_scene/reuse")
    return wf


def controlnet() -> Workflow:
    wf = Workflow("controlnet")
    wf.note("""Concept handles + ControlNet: the composition comes from a reference picture's edges (Canny), the
objects from the pack.

ControlNets are made for one model family: this uses an SD1.5 checkpoint and the SD1.5 Canny ControlNet
(control_v11p_sd15_canny_fp16.safetensors in models/controlnet), so the pack must be trained on SD1.5 too:
run extract_and_generate with an SD1.5 checkpoint and pack_name "creature_sd15" first.
Lower the ControlNet strength (0.5-0.8) to give the concepts more room.""" + COMMON_NOTE, height=360)
    ckpt = wf.add("CheckpointLoaderSimple", title="Base model (SD1.5)", col=0, ckpt_name=SD15)
    wf.vae = ckpt[2]
    pack = wf.add("ConceptPackLoader", title="Load Concept Pack (trained on SD1.5)", col=0,
                  pack_name=f"{PACK}_sd15.safetensors")
    reference = wf.add("LoadImage", title="Composition reference", col=1, image="control_reference.jpg")
    edges = wf.add("Canny", col=1, image=reference[0], low_threshold=0.4, high_threshold=0.8)
    wf.add("PreviewImage", title="Control image", col=1, images=edges[0])
    cnet = wf.add("ControlNetLoader", col=2, control_net_name=CANNY)
    inject = wf.add("HandleInjector", col=2, model=ckpt[0], clip=ckpt[1], concepts=pack[0],
                    strength_model=1.0, strength_clip=1.0)
    pos = wf.add("ConceptPromptEncoder", title="Prompt with handles (positive)", col=2, clip=inject[1],
                 concepts=pack[0], text="a watercolor painting of <figurine> and <stone> in a forest",
                 guidance=GUIDANCE)
    neg = wf.add("CLIPTextEncode", title="Negative prompt", col=2, clip=inject[1], text=NEGATIVE)
    apply = wf.add("ControlNetApplyAdvanced", col=3, positive=pos[0], negative=neg[0], control_net=cnet[0],
                   image=edges[0], strength=0.8, start_percent=0.0, end_percent=1.0)
    latent = wf.add("EmptyLatentImage", col=3, width=512, height=512, batch_size=1)
    sampler = wf.add("KSampler", col=3, seed_control="randomize", model=inject[0], positive=apply[0],
                     negative=apply[1], latent_image=latent[0], seed=42, denoise=1.0, **SAMPLER)
    image = wf.add("VAEDecode", col=4, samples=sampler[0], vae=ckpt[2])
    wf.add("SaveImage", col=4, images=image[0], filename_prefix="break_a_scene/controlnet", node_width=420)
    return wf


def local_edit() -> Workflow:
    wf = Workflow("local_edit")
    wf.note("""Local editing by example (paper, section 5): put a learned concept into a region of another picture.

1. Load the picture to edit, right-click it -> "Open in MaskEditor" and paint the region to replace
   (LoadImage's MASK output is the painted area).
2. The prompt says what goes there, with a handle: "a photo of <stone>".
3. Only the masked latent is re-noised and denoised (Set Latent Noise Mask; denoise < 1 keeps some of the
   original layout); the result is pasted back inside the mask so everything else stays pixel-exact.
Raise denoise towards 1.0 for a bigger change, grow the mask for a softer seam.""" + COMMON_NOTE, height=380)
    ckpt = wf.add("CheckpointLoaderSimple", title="Base model (the one the pack was trained on)", col=0,
                  ckpt_name=SD21)
    wf.vae = ckpt[2]
    pack = wf.add("ConceptPackLoader", title="Load Concept Pack", col=0, pack_name=f"{PACK}.safetensors")
    target = wf.add("LoadImage", title="Picture to edit (paint the region in the mask editor)", col=1,
                    image="edit_target.png")
    grown = wf.add("GrowMask", col=1, mask=target[1], expand=8, tapered_corners=True)
    inject = wf.add("HandleInjector", col=2, model=ckpt[0], clip=ckpt[1], concepts=pack[0],
                    strength_model=1.0, strength_clip=1.0)
    pos = wf.add("ConceptPromptEncoder", title="What goes into the region (positive)", col=2, clip=inject[1],
                 concepts=pack[0], text="a photo of <stone>", guidance=GUIDANCE)
    neg = wf.add("CLIPTextEncode", title="Negative prompt", col=2, clip=inject[1], text=NEGATIVE)
    encoded = wf.add("VAEEncode", col=3, pixels=target[0], vae=ckpt[2])
    masked = wf.add("SetLatentNoiseMask", col=3, samples=encoded[0], mask=grown[0])
    sampler = wf.add("KSampler", col=3, seed_control="randomize", model=inject[0], positive=pos[0],
                     negative=neg[0], latent_image=masked[0], seed=42, denoise=0.85, **SAMPLER)
    decoded = wf.add("VAEDecode", col=4, samples=sampler[0], vae=ckpt[2])
    pasted = wf.add("ImageCompositeMasked", title="Paste the edit back (outside the mask unchanged)", col=4,
                    destination=target[0], source=decoded[0], x=0, y=0, resize_source=False, mask=grown[0])
    wf.add("SaveImage", col=5, images=pasted[0], filename_prefix="break_a_scene/local_edit", node_width=420)
    return wf


def stock_nodes_only() -> Workflow:
    wf = Workflow("stock_nodes_only")
    wf.note("""Use an exported pack with ComfyUI's own nodes only (no Break-A-Scene node needed to generate):
this is how you share concepts with people who don't have this pack installed.

"Export Concept Pack" (in extract_and_generate) writes
  models/loras/creature.safetensors           the LoRA (kohya keys; also loads in A1111 and diffusers)
  models/embeddings/creature_<concept>.safetensors   one embedding per handle
Load the LoRA with the stock Load LoRA node and write each handle as embedding:<pack>_<concept> in a
normal CLIP Text Encode. Use the checkpoint the pack was trained on.""", height=330)
    ckpt = wf.add("CheckpointLoaderSimple", title="Base model (the one the pack was trained on)", col=0,
                  ckpt_name=SD21)
    wf.vae = ckpt[2]
    lora = wf.add("LoraLoader", title="Load LoRA (exported pack)", col=0, model=ckpt[0], clip=ckpt[1],
                  lora_name=f"{PACK}.safetensors", strength_model=1.0, strength_clip=1.0)
    pos = wf.add("CLIPTextEncode", title="Prompt with embeddings (positive)", col=1, clip=lora[1],
                 text=f"an oil painting of embedding:{PACK}_bowl next to embedding:{PACK}_figurine, "
                      "on a wooden table")
    neg = wf.add("CLIPTextEncode", title="Negative prompt", col=1, clip=lora[1], text=NEGATIVE)
    latent = wf.add("EmptyLatentImage", col=1, width=512, height=512, batch_size=1)
    sampler = wf.add("KSampler", col=2, seed_control="randomize", model=lora[0], positive=pos[0],
                     negative=neg[0], latent_image=latent[0], seed=42, denoise=1.0, **SAMPLER)
    image = wf.add("VAEDecode", col=2, samples=sampler[0], vae=ckpt[2])
    wf.add("SaveImage", col=3, images=image[0], filename_prefix="break_a_scene/stock", node_width=420)
    return wf


WORKFLOWS = {f.__name__: f for f in (extract_and_generate, reuse_saved_pack, controlnet, local_edit,
                                      stock_nodes_only, sdxl_extract_and_generate, flux_extract_and_generate)}


def build_all() -> dict[str, dict]:
    return {name: make().to_json() for name, make in WORKFLOWS.items()}


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    parser.add_argument("--out", default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, workflow in build_all().items():
        path = os.path.join(args.out, f"{name}.json")
        text = dumps(workflow)
        if args.check:
            try:
                with open(path, encoding="utf-8") as fh:
                    if fh.read() != text:
                        stale.append(path)
            except FileNotFoundError:
                stale.append(path)
            continue
        os.makedirs(args.out, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {os.path.relpath(path, ROOT)}")
    if stale:
        print("out of date (run scripts/make_workflows.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
