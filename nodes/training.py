"""BreakASceneTrainer: ComfyUI MODEL/CLIP/VAE + scene -> trained concept pack (saved, or loaded from the cache).

Translation only: ComfyUI's own loaded model is trained in place by the engine's training loop
(``bas_engine.trainer.train``) through the model adapter in ``comfy_model/`` (no second copy of the model, no
diffusers); this module maps ComfyUI's progress bar, previews, interrupt and memory management onto the engine's
callbacks.
"""
from __future__ import annotations

import gc
import logging
import os
import traceback

import torch
from comfy_api.latest import io

from .common import (CATEGORY, UserError, check_clip, check_name, model_family, packs_dir, prediction_type,
                     unet_fingerprint, user_error)
from .live import send_cached
from .scene import scene_labels
from .types import Concepts, ConceptsType, Scene

log = logging.getLogger("break_a_scene")

PREVIEW_SIZE = 512          # longest side of the live preview sent to the UI
PREVIEWS_PER_PHASE = 8      # about this many attention previews per phase (at most one every 50 steps)


#: the TrainConfig fields this node exposes, in this order; defaults, bounds and help text are TrainConfig's
NODE_SETTINGS = ("phase1_steps", "phase2_steps", "phase1_lr", "phase2_lr", "mode", "lora_rank", "train_text_encoder",
                 "attention_loss_weight", "masked_loss", "union_sampling", "resolution", "seed")
#: what only the UI needs: widget steps, and phase 2 being required here (the pack holds its weights)
SETTING_UI = {"phase1_lr": {"step": 1e-5}, "phase2_lr": {"step": 1e-6}, "attention_loss_weight": {"step": 0.001},
              "phase2_steps": {"min": 1}}


def setting_input(name: str, **ui) -> io.Input:
    """A node input for a TrainConfig field: its default, bounds and help from TrainConfig, UI steps from `ui`.

    An optional float (None = auto, e.g. phase2_lr) is shown as 0 = auto.
    """
    from ..bas_engine.config import TrainConfig, setting_info

    info = setting_info(name)
    kind = TrainConfig.__dataclass_fields__[name].type
    tooltip = info["help"][0].upper() + info["help"][1:] + "."
    default = info["default"]
    if info["choices"]:
        return io.Combo.Input(name, options=list(info["choices"]), default=default, tooltip=tooltip)
    if kind == "bool":
        return io.Boolean.Input(name, default=default, tooltip=tooltip)
    bounds = {"min": info["min"], "max": info["max"], **({"step": info["step"]} if info["step"] else {})}
    bounds.update(ui)
    if kind == "int":
        return io.Int.Input(name, default=default, tooltip=tooltip, **bounds)
    return io.Float.Input(name, default=0.0 if default is None else default, round=False, tooltip=tooltip, **bounds)


def make_config(settings: dict, num_concepts: int):
    """TrainConfig from the node's setting inputs (0 for an optional float means None: auto)."""
    from ..bas_engine.config import TrainConfig, setting_info
    from ..bas_engine.errors import BASError

    values = {}
    for name in NODE_SETTINGS:
        value = settings.get(name, setting_info(name)["default"])
        if setting_info(name)["optional"] and not value:
            value = None
        values[name] = value
    config = TrainConfig(**values)
    if config.phase2_steps < 1:
        raise UserError("phase2_steps: must be at least 1 (phase 2 trains the LoRA / weights the pack holds)")
    try:
        config.validate(num_concepts)
    except BASError as exc:
        raise user_error(exc.field if exc.field in NODE_SETTINGS else "settings", exc) from exc
    return config


def trainable_scene(scene):
    """A copy of the scene whose tensors are normal (not inference) tensors."""
    from ..bas_engine.scene import Scene as EngineScene

    if not all(hasattr(scene, a) for a in ("image", "masks", "names", "initializers")):
        raise UserError(f"scene: expected a BAS_SCENE from the Masked Concept Loader, got {type(scene).__name__}")
    with torch.inference_mode(False):
        return EngineScene(scene.image.detach().cpu().float().clone(), scene.masks.detach().cpu().float().clone(),
                           list(scene.names), list(scene.initializers))


class _Progress:
    """TrainCallbacks targets: ComfyUI progress bar, attention previews, interrupt flag, loss history."""

    def __init__(self, total: int, node_id, labels: list[str], live=None):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.labels = labels
        self.live = live            # the node's live view (nodes/live.py), None for none
        self.history: dict[str, list[float]] = {}
        self.last_preview = None
        self.steps = 0

    def should_cancel(self) -> bool:
        import comfy.model_management

        return comfy.model_management.processing_interrupted()

    def on_progress(self, event) -> None:
        self.steps += 1
        for key in ("diffusion", "attention"):
            if key in event.losses:
                self.history.setdefault(key, []).append(float(event.losses[key]))
        if self.live is not None:
            self.live.on_progress(event)
        self.bar.update_absolute(event.done, event.total)     # the server hook may raise InterruptProcessingException

    def on_preview(self, event) -> None:
        from ..bas_engine.preview import attention_overlay

        self.last_preview = event
        if self.live is not None:
            self.live.on_preview(event)
        picture = attention_overlay(event.image, event.maps, self.labels, event.chosen)
        self.bar.update_absolute(event.done, event.total, ("JPEG", picture, PREVIEW_SIZE))

    def picture(self, scene):
        from ..bas_engine.preview import attention_overlay, loss_curve, mask_overlay, stack_vertically

        if self.last_preview is None:
            return mask_overlay(scene.image, scene.masks, self.labels)
        event = self.last_preview
        sheet = attention_overlay(event.image, event.maps, self.labels, event.chosen)
        return stack_vertically([sheet, loss_curve(self.history, (max(sheet.width, 384), 192))])


def _clear_frames(exc: BaseException | None) -> None:
    """Release the locals of finished frames an exception keeps alive (the engine's modules, optimizer)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def release_memory() -> None:
    import comfy.model_management

    gc.collect()
    comfy.model_management.soft_empty_cache()


def train_pack(model, clip, vae, scene, config, node_id, family: str):
    """Train ComfyUI's MODEL / CLIP in place on the scene and return (pack, progress).

    The MODEL and CLIP that flowed in are unchanged afterwards however training ends (the adapter works on clones
    and undoes what it attached to shared layers), and the training memory is given back.
    """
    import comfy.model_management as mm

    from ..bas_engine.callbacks import TrainCallbacks
    from ..bas_engine.errors import BASError, Cancelled
    from ..bas_engine.handles import default_tokens
    from ..bas_engine.trainer import train
    from .comfy_model import ComfyModel
    from .live import LiveView

    labels = scene_labels(scene)
    steps = max(config.phase1_steps, config.phase2_steps)
    live = LiveView(node_id, default_tokens(scene.num_concepts), list(scene.names))
    progress = _Progress(config.phase1_steps + config.phase2_steps, node_id, labels, live)
    callbacks = TrainCallbacks(on_progress=progress.on_progress, should_cancel=progress.should_cancel,
                               on_preview=progress.on_preview,
                               preview_every=max(1, min(50, steps // PREVIEWS_PER_PHASE)))
    cancelled = False
    try:
        with torch.inference_mode(False):
            adapter = ComfyModel(model, clip, vae, family, prediction_type(model))
            try:
                pack = train(adapter, scene, config, callbacks, device=adapter.device,
                             cache_dir=os.path.join(_temp_dir(), "break_a_scene"))
            finally:
                del adapter
        return pack, progress
    except Cancelled as exc:
        _clear_frames(exc)
        cancelled = True
    except BASError as exc:
        _clear_frames(exc)
        raise user_error("Break-A-Scene Trainer", exc) from exc
    except BaseException as exc:     # InterruptProcessingException from the progress hook, OOM, ...: propagate
        _clear_frames(exc)
        raise
    finally:
        release_memory()
    if cancelled:
        mm.throw_exception_if_processing_interrupted()       # clears ComfyUI's flag and raises
        raise mm.InterruptProcessingException()


def _temp_dir() -> str:
    import folder_paths

    return folder_paths.get_temp_directory()


class Trainer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BreakASceneTrainer",
            display_name="Break-A-Scene Trainer",
            category=CATEGORY,
            description="Learns one handle per concept of the scene (phase 1: handles only; phase 2: handles + "
                        "LoRA or full fine-tune) and saves the concept pack to models/break_a_scene/<pack_name>."
                        "safetensors. The same model, scene and settings load the saved pack instead of training "
                        "again. Trains the loaded model in place (no second copy): SD1.x, SD2.x and SDXL checkpoints.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x / SD2.x / SDXL model to learn the concepts on, as it comes "
                                                "in (LoRAs applied before this node are trained on top of; use the "
                                                "pack with them)."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint (encodes the picture once)."),
                Scene.Input("scene", tooltip="The scene from the Masked Concept Loader."),
                io.String.Input("pack_name", default="scene",
                                tooltip="File name of the pack in models/break_a_scene (letters, digits, _ and -). "
                                        "Also the prefix of the handle embeddings: embedding:<pack_name>_<concept>."),
                *(setting_input(name, **SETTING_UI.get(name, {})) for name in NODE_SETTINGS),
                io.Boolean.Input("retrain", default=False,
                                 tooltip="Train even if the pack exists, and overwrite it. Off: a saved pack of "
                                         "the same model, scene and settings is loaded; a different one with this "
                                         "name is an error."),
            ],
            outputs=[
                ConceptsType.Output(display_name="concepts", tooltip="The trained concept pack."),
                io.Image.Output(display_name="preview", tooltip="Attention of each handle over the picture at the "
                                                                "last step, and the loss curves."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, scene, pack_name: str = "scene", retrain: bool = False,
                **settings) -> io.NodeOutput:
        from ..bas_engine.errors import PackError
        from ..bas_engine.pack import load_pack, pack_mismatch, save_pack
        from ..bas_engine.preview import mask_overlay, pil_to_tensor

        family = model_family(model)
        check_clip(clip, family)
        if vae is None:
            raise UserError("vae: no VAE connected")
        pack_name = check_name(pack_name, "pack_name")
        scene = trainable_scene(scene)
        config = make_config(settings, scene.num_concepts)
        path = os.path.join(packs_dir(), pack_name + ".safetensors")

        fingerprint = unet_fingerprint(model)
        if os.path.exists(path) and not retrain:
            try:
                saved = load_pack(path)
            except PackError as exc:
                raise UserError(f"pack_name: {path} exists but is not a usable concept pack ({exc}); choose another "
                                "pack_name, or turn on retrain to overwrite it") from exc
            reasons = pack_mismatch(saved.meta, fingerprint, scene.fingerprint(), config)
            if not reasons:
                preview = pil_to_tensor(mask_overlay(scene.image, scene.masks, scene_labels(scene)))[None]
                summary = f"loaded {pack_name}.safetensors (same model, scene and settings; no training)"
                send_cached(cls.hidden.unique_id if cls.hidden else None, saved)
                return io.NodeOutput(Concepts(saved, pack_name, path), preview, ui={"bas_summary": [summary]})
            raise UserError(f"pack_name: {path} already exists and was trained with {'; '.join(reasons)}. Choose "
                            "another pack_name, or turn on retrain to overwrite it.")

        pack, progress = train_pack(model, clip, vae, scene, config, cls.hidden.unique_id if cls.hidden else None,
                                    family)
        pack.meta["live_view"] = progress.live.snapshot()     # what a later cache hit shows in the node
        save_pack(pack, path)
        progress.live.finish(pack.meta.get("losses") or {})
        preview = pil_to_tensor(progress.picture(scene))[None]
        summary = (f"trained {config.phase1_steps}+{config.phase2_steps} steps ({config.mode}), saved "
                   f"{pack_name}.safetensors")
        return io.NodeOutput(Concepts(pack, pack_name, path), preview, ui={"bas_summary": [summary]})
