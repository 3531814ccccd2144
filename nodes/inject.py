"""HandleInjector: a MODEL/CLIP pair that knows a concept pack (LoRA or full deltas + handle embeddings).

Weights go through ComfyUI's own patching (``comfy.sd.load_lora_for_models`` for LoRA packs,
``ModelPatcher.add_patches`` for full-mode deltas), so ComfyUI applies them when it loads the model and undoes
them afterwards; the input MODEL and CLIP are never modified. The handles become in-memory embeddings of the
CLIP clone, named like the exported files (``embedding:<pack>_<concept>``).
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from .common import (CATEGORY, UserError, check_clip, clip_encoders, encoder_width, model_family, unet_fingerprint,
                     user_error)
from .handle_tokens import installed_handles, tokenizer_with_vectors
from .types import Concepts, ConceptsType

log = logging.getLogger("break_a_scene")


# -- handle embeddings on a CLIP -------------------------------------------------------------------------------

def handle_vectors(concepts: Concepts, encoder: str) -> dict[str, torch.Tensor]:
    """{embedding name: (1, dim) float32 vector} of the pack's handles for the CLIP's text encoder."""
    pack = concepts.pack
    vectors = pack.handles.get(encoder)
    if vectors is None:
        if len(pack.handles) != 1:
            raise UserError(f"concepts: the pack has handles for {sorted(pack.handles)}, not for {encoder}")
        vectors = next(iter(pack.handles.values()))
    with torch.inference_mode(False):
        vectors = vectors.detach().to("cpu", torch.float32).clone()
    return {stem: vectors[i:i + 1] for i, stem in enumerate(concepts.stems())}


def has_handles(clip, concepts: Concepts) -> bool:
    for encoder in clip_encoders(clip):
        installed = installed_handles(clip, encoder)
        wanted = handle_vectors(concepts, encoder)
        if not all(name in installed and torch.equal(installed[name], vec) for name, vec in wanted.items()):
            return False
    return True


def install_handles(clip, concepts: Concepts) -> None:
    """Give `clip` (a clone: its tokenizer object is replaced, not changed) the pack's handles as embeddings, in
    every text encoder's tokenizer (SDXL: clip_l and clip_g, each with its own vectors)."""
    vectors = {}
    for encoder in clip_encoders(clip):
        vectors[encoder] = handle_vectors(concepts, encoder)
        size = encoder_width(clip, encoder)
        for name, vec in vectors[encoder].items():
            if size is not None and vec.shape[-1] != size:
                raise UserError(f"concepts: handle {name} has {vec.shape[-1]} values, this CLIP's {encoder} embeds "
                                f"{size}; the pack was made for another model family")
    clip.tokenizer = tokenizer_with_vectors(clip.tokenizer, vectors)


# -- weights -----------------------------------------------------------------------------------------------------

def _lora_module(key: str) -> str:
    return key.split(".", 1)[0]          # kohya names have no dots: lora_unet_x_y.lora_down.weight


def apply_lora(model, clip, pack, strength_model: float, strength_clip: float):
    import comfy.lora
    import comfy.sd

    from ..bas_engine.pack import export_kohya_lora

    lora = export_kohya_lora(pack)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    modules = sorted({_lora_module(k) for k in lora})
    missing = [m for m in modules if m not in key_map]
    if missing:
        raise UserError(f"concepts: {len(missing)} of the pack's {len(modules)} LoRA modules have no counterpart in "
                        f"this MODEL/CLIP (e.g. {', '.join(missing[:3])}); the pack was made for another model")
    new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
    dropped = []
    for module in modules:
        target = key_map[module]
        key = target if isinstance(target, str) else target[0]
        added = any(len(patcher.patches.get(key, ())) > len(before.patches.get(key, ()))
                    for patcher, before in ((new_model, model), (new_clip.patcher, clip.patcher)))
        if not added:
            dropped.append(module)
    if dropped:
        raise UserError(f"concepts: ComfyUI did not load {len(dropped)} of the pack's {len(modules)} LoRA modules "
                        f"(e.g. {', '.join(dropped[:3])})")
    return new_model, new_clip


def apply_deltas(model, clip, pack, family: str, strength_model: float, strength_clip: float):
    from ..bas_engine.families import get_family
    from ..bas_engine.weight_names import diffusers_to_comfy_clip_keys, ldm_to_diffusers_unet_keys

    unet_deltas = {k[len("unet."):]: v for k, v in pack.deltas.items() if k.startswith("unet.")}

    # pack prefix of each text encoder ("text_encoder", SDXL's "text_encoder_2") -> its family entry
    specs = {("text_encoder" if i == 0 else f"text_encoder_{i + 1}"): spec
             for i, spec in enumerate(get_family(family).text_encoders)}
    te_deltas = {prefix: {k[len(prefix) + 1:]: v for k, v in pack.deltas.items() if k.startswith(prefix + ".")}
                 for prefix in specs}
    other = [k for k in pack.deltas if k.split(".", 1)[0] not in ("unet", *specs)]
    if other:
        raise UserError(f"concepts: unexpected weight deltas in the pack ({', '.join(other[:3])})")
    new_model, new_clip = model.clone(), clip.clone()
    if unet_deltas:
        diffusion_model = model.model.diffusion_model
        ldm = ldm_to_diffusers_unet_keys(diffusion_model.state_dict(), max(diffusion_model.num_res_blocks))
        names = {diffusers: name for name, diffusers in ldm.items()}          # diffusers name -> the model's
        unknown = [k for k in unet_deltas if k not in names]
        if unknown:
            raise UserError(f"concepts: the pack changes UNet weights this model does not have "
                            f"(e.g. {', '.join(unknown[:3])})")
        patches = {"diffusion_model." + names[k]: (v,) for k, v in unet_deltas.items()}
        accepted = set(new_model.add_patches(patches, strength_model))
        if accepted != set(patches):
            missing = sorted(set(patches) - accepted)
            raise UserError(f"concepts: ComfyUI refused {len(missing)} UNet weight deltas (e.g. {missing[:3]})")
    for prefix, deltas in te_deltas.items():
        if not deltas:
            continue
        names = diffusers_to_comfy_clip_keys(list(deltas), specs[prefix])
        patches = {names[k]: (v,) for k, v in deltas.items()}
        accepted = set(new_clip.add_patches(patches, strength_clip))
        if accepted != set(patches):
            missing = sorted(set(patches) - accepted)
            raise UserError(f"concepts: ComfyUI refused {len(missing)} text-encoder weight deltas "
                            f"(e.g. {missing[:3]})")
    return new_model, new_clip


def inject(model, clip, concepts: Concepts, strength_model: float = 1.0, strength_clip: float = 1.0):
    from ..bas_engine.errors import BASError
    from ..bas_engine.pack import check_compatible

    if not isinstance(concepts, Concepts):
        raise UserError(f"concepts: expected BAS_CONCEPTS, got {type(concepts).__name__}")
    family = model_family(model)
    encoders = check_clip(clip, family)
    pack = concepts.pack
    widths = {encoder: encoder_width(clip, encoder) for encoder in encoders}
    try:
        for warning in check_compatible(pack, family, unet_fingerprint(model),
                                        encoder_widths={k: w for k, w in widths.items() if w} or None):
            log.warning("Break-A-Scene Handle Injector: %s", warning)
    except BASError as exc:
        raise user_error("concepts", exc) from exc
    if pack.mode == "lora":
        new_model, new_clip = apply_lora(model, clip, pack, strength_model, strength_clip)
    else:
        new_model, new_clip = apply_deltas(model, clip, pack, family, strength_model, strength_clip)
    install_handles(new_clip, concepts)
    return new_model, new_clip


class HandleInjector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HandleInjector",
            display_name="Handle Injector",
            category=CATEGORY,
            description="Applies a concept pack to a MODEL and CLIP: its LoRA (through ComfyUI's LoRA loading) or "
                        "full fine-tune deltas, and its handles as embeddings, so any prompt node can write "
                        "'embedding:<pack>_<concept>' (the Concept Prompt Encoder also takes <asset0> / <name>).",
            inputs=[
                io.Model.Input("model", tooltip="The model the pack was trained on (same SD family)."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint."),
                ConceptsType.Input("concepts", tooltip="The concept pack (Trainer or Load Concept Pack)."),
                io.Float.Input("strength_model", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the pack's UNet weights (LoRA or deltas)."),
                io.Float.Input("strength_clip", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of the pack's text-encoder weights, if it has any (the handle "
                                       "embeddings themselves are not scaled)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the pack's weights."),
                io.Clip.Output(display_name="clip", tooltip="The CLIP with the pack's weights and handles."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, concepts, strength_model: float = 1.0, strength_clip: float = 1.0) -> io.NodeOutput:
        new_model, new_clip = inject(model, clip, concepts, float(strength_model), float(strength_clip))
        return io.NodeOutput(new_model, new_clip)
