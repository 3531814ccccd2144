"""MaskedConceptLoader: one image + one loose mask per concept -> a scene."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from .common import CATEGORY, UserError, user_error
from .types import Scene

MAX_SEPARATE_MASKS = 8

EMPTY_MASK_HINT = (
    "If it comes from LoadImage's MASK output: that output is 1 - alpha, so it is empty for a picture without "
    "transparency (a picture with no alpha channel gives a 64x64 all-zero mask). Load the black-and-white mask "
    "picture with LoadImage and turn its IMAGE into a mask with 'Convert Image to Mask' (channel red), or paint "
    "the concept with LoadImage's mask editor.")


def _as_masks(value, what: str, single: bool) -> list[tuple[str, torch.Tensor]]:
    """A ComfyUI MASK ((B, H, W) or (H, W)) -> [(label, (H, W) tensor)]."""
    if not torch.is_tensor(value):
        raise UserError(f"{what}: expected a MASK, got {type(value).__name__}")
    if value.ndim == 2:
        value = value[None]
    if value.ndim == 4 and value.shape[-1] == 1:        # (B, H, W, 1)
        value = value[..., 0]
    if value.ndim != 3:
        raise UserError(f"{what}: expected a mask of shape (batch, height, width), got {tuple(value.shape)}")
    if single and value.shape[0] != 1:
        raise UserError(f"{what}: got a batch of {value.shape[0]} masks; each mask_N input takes one concept's mask "
                        "(connect a batch to the 'masks' input instead)")
    if single:
        return [(what, value[0])]
    return [(f"{what}[{i}]", value[i]) for i in range(value.shape[0])]


#: engine scene fields -> this node's inputs (the engine's error carries the field as data)
_INPUT_OF_FIELD = {"image": "image", "names": "concept_names", "initializers": "initializers"}


def build_scene(image, concept_names: str, initializers: str, masks=None, separate: dict | None = None):
    """Turn the node's inputs into a bas_engine Scene (normal tensors, usable for training).

    Only ComfyUI's shapes are checked here; every rule of a scene (masks not empty, values in [0, 1], names and
    initializers one per mask) is the engine's ``load_scene``.
    """
    from ..bas_engine.errors import BASError
    from ..bas_engine.scene import is_empty_mask, load_scene, split_list

    if not torch.is_tensor(image):
        raise UserError(f"image: expected an IMAGE, got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] < 3:
        raise UserError(f"image: expected an IMAGE of shape (batch, height, width, 3), got {tuple(image.shape)}")
    if image.shape[0] != 1:
        raise UserError(f"image: got a batch of {image.shape[0]} images; Break-A-Scene learns from one picture")

    entries: list[tuple[str, torch.Tensor]] = []
    if masks is not None:
        entries += _as_masks(masks, "masks", single=False)
    for i in range(MAX_SEPARATE_MASKS):
        value = (separate or {}).get(f"mask_{i}")
        if value is not None:
            entries += _as_masks(value, f"mask_{i}", single=True)
    if not entries:
        raise UserError("masks: connect one mask per concept (the 'masks' batch and/or mask_0 ... mask_7)")

    with torch.inference_mode(False):       # nodes run in inference mode; the scene must be trainable later
        pixels = image[0, :, :, :3].detach().to("cpu", torch.float32).clone().permute(2, 0, 1).contiguous()
        mask_list = [mask.detach().to("cpu", torch.float32).clone() for _, mask in entries]
        try:
            return load_scene(pixels, mask_list, split_list(concept_names), split_list(initializers),
                              mask_labels=[label for label, _ in entries])
        except BASError as exc:
            if exc.field == "masks" and exc.item is not None:
                hint = f" {EMPTY_MASK_HINT}" if is_empty_mask(mask_list[exc.item]) else ""
                raise UserError(f"{exc}{hint}") from exc
            raise user_error(_INPUT_OF_FIELD.get(exc.field, "Masked Concept Loader"), exc) from exc


def scene_labels(scene) -> list[str]:
    return [f"<asset{i}>" if name == f"asset{i}" else f"<asset{i}> {name}" for i, name in enumerate(scene.names)]


class MaskedConceptLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        separate = [io.Mask.Input(f"mask_{i}", optional=True,
                                  tooltip="Mask of one concept (white = the concept), after the 'masks' batch. "
                                          "Masks of another size are resized to the image.")
                    for i in range(MAX_SEPARATE_MASKS)]
        return io.Schema(
            node_id="MaskedConceptLoader",
            display_name="Masked Concept Loader",
            category=CATEGORY,
            description="One picture and one loose mask per concept: the scene Break-A-Scene learns from. Each mask "
                        "becomes a handle <asset0>, <asset1>, ... in mask order (the 'masks' batch first, then "
                        "mask_0 ... mask_7).",
            inputs=[
                io.Image.Input("image", tooltip="The picture holding the concepts (the first image of a batch of one)."),
                io.String.Input("concept_names", default="",
                                tooltip="Comma-separated concept names, one per mask, e.g. 'cat, bowl'. Letters, "
                                        "digits, _ and - only. Empty: asset0, asset1, ... Prompts may say "
                                        "<cat> instead of <asset0>."),
                io.String.Input("initializers", default="",
                                tooltip="Comma-separated words the handles start from, one per mask; an empty "
                                        "entry means none (e.g. 'cat,,bowl'). Empty: concept names are used where "
                                        "they are words."),
                io.Mask.Input("masks", optional=True,
                              tooltip="A batch of masks, one per concept (white = the concept)."),
                *separate,
            ],
            outputs=[
                Scene.Output(display_name="scene", tooltip="The scene for the Break-A-Scene Trainer."),
                io.Image.Output(display_name="preview", tooltip="The masks tinted over the picture, labelled "
                                                                "with their handles."),
            ],
        )

    @classmethod
    def execute(cls, image, concept_names: str = "", initializers: str = "", masks=None, **separate) -> io.NodeOutput:
        from ..bas_engine.preview import mask_overlay, pil_to_tensor

        scene = build_scene(image, concept_names, initializers, masks, separate)
        labels = scene_labels(scene)
        preview = pil_to_tensor(mask_overlay(scene.image, scene.masks, labels))[None]
        summary = f"{scene.num_concepts} concept{'s' if scene.num_concepts != 1 else ''}: " + ", ".join(labels)
        return io.NodeOutput(scene, preview, ui={"bas_summary": [summary]})
