"""Shared helpers of the nodes: the model folder, model-family checks, names and user-facing errors.

Nothing here imports the engine at module level (it pulls in torch and transformers); node code imports it lazily.
"""
from __future__ import annotations

import os
import re

CATEGORY = "Break-A-Scene"
#: folder_paths name of the concept-pack folder (models/break_a_scene, extra_model_paths.yaml `break_a_scene:`)
PACK_FOLDER = "break_a_scene"
PACK_EXTENSIONS = {".safetensors"}

# The family table is plain data (no diffusers): ComfyUI's class names, CLIP module names and labels per family.
from ..bas_engine.families import FAMILIES, family_for_comfy_config, get_family, supported_labels  # noqa: E402

_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class UserError(ValueError):
    """An error the user can fix; ComfyUI shows the message in the UI."""


def user_error(what: str, exc: BaseException) -> UserError:
    """Wrap an engine error (BASError) so the message starts with the node input `what` it concerns.

    The engine's messages start with its own name of the input (its ``field``, e.g. "names:"); the node's
    name of that input ("concept_names:") takes its place.
    """
    message = str(exc)
    field = getattr(exc, "field", None)
    if field and field != what and message.startswith(f"{field}:"):
        message = message[len(field) + 1:].lstrip()
    return UserError(message if message.startswith(f"{what}:") else f"{what}: {message}")


# -- model folder ----------------------------------------------------------------------------------------------

def register_model_folder() -> None:
    """Register models/break_a_scene for .safetensors packs, keeping paths already configured.

    ComfyUI reads extra_model_paths.yaml before it imports custom nodes, so a ``break_a_scene:`` entry may
    already be there: its folders are kept (and stay first, so packs are saved there) and the default
    folder is appended. Paths added later (add_model_folder_path) are appended to ours.
    """
    import folder_paths

    default = os.path.join(folder_paths.models_dir, PACK_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(PACK_FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[PACK_FOLDER] = ([default], set(PACK_EXTENSIONS))
        return
    paths = list(entry[0])
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[PACK_FOLDER] = (paths, set(PACK_EXTENSIONS))


def packs_dir() -> str:
    """The folder new packs are written to: the first registered break_a_scene folder."""
    import folder_paths

    if PACK_FOLDER not in folder_paths.folder_names_and_paths:
        register_model_folder()
    return folder_paths.get_folder_paths(PACK_FOLDER)[0]


def first_folder(kind: str) -> str:
    import folder_paths

    try:
        paths = folder_paths.get_folder_paths(kind)
    except KeyError:
        paths = []
    if not paths:
        raise UserError(f"ComfyUI has no '{kind}' model folder configured")
    return paths[0]


def check_name(value: str, what: str) -> str:
    value = (value or "").strip()
    if not _NAME_RE.match(value):
        raise UserError(f"{what}: {value!r} is not a usable file name; use letters, digits, '_' and '-' only")
    return value


# -- model families --------------------------------------------------------------------------------------------

def model_family(model, what: str = "model") -> str:
    """The family key ('sd1', 'sd2', ...) of a ComfyUI MODEL; anything else is an error naming its family."""
    if model is None:
        raise UserError(f"{what}: no model connected")
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    name = type(config).__name__ if config is not None else type(base).__name__
    family = family_for_comfy_config(name)
    if family is None:
        names = [f"{f.label} ({'/'.join(f.comfy_model_configs)})" for f in FAMILIES.values()]
        supported = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        raise UserError(f"{what}: this is a {name} model; Break-A-Scene supports {supported} checkpoints only")
    prediction_type(model, what)
    return family.key


def prediction_type(model, what: str = "model") -> str:
    from comfy.model_base import ModelType

    model_type = getattr(model.model, "model_type", None)
    if model_type == ModelType.EPS:
        return "epsilon"
    if model_type == ModelType.V_PREDICTION:
        return "v_prediction"
    if model_type == ModelType.FLUX:
        return "flow"
    label = getattr(model_type, "name", model_type)
    raise UserError(f"{what}: prediction type {label} is not supported (epsilon, v-prediction and Flux's flow "
                    "matching are)")


def clip_encoders(clip, what: str = "clip") -> list[str]:
    """Names of the CLIP's text encoders: ['clip_l'], ['clip_h'], SDXL's ['clip_l', 'clip_g'] (family order)."""
    if clip is None:
        raise UserError(f"{what}: no CLIP connected (does the checkpoint have a text encoder?)")
    tokenizer = getattr(clip, "tokenizer", None)
    name = getattr(tokenizer, "clip", None)
    if isinstance(name, str) and hasattr(tokenizer, name):
        return [name]
    # ComfyUI's multi-encoder tokenizers (SDXLTokenizer) hold one tokenizer per encoder, named like ours
    for family in FAMILIES.values():
        if len(family.text_encoders) > 1 and all(hasattr(tokenizer, n) for n in family.encoder_names):
            return list(family.encoder_names)
    raise UserError(f"{what}: this CLIP ({type(tokenizer).__name__}) is not a text encoder of {supported_labels()}")


def encoder_width(clip, encoder: str) -> int | None:
    """The width of a CLIP's text encoder as its token-embedding table has it (the tokenizer's ``embedding_size``
    is the family's usual width, not necessarily this model's); None when the CLIP does not tell."""
    module = getattr(getattr(clip, "cond_stage_model", None), encoder, None)
    try:
        return int(module.transformer.get_input_embeddings().weight.shape[-1])
    except AttributeError:
        size = getattr(getattr(getattr(clip, "tokenizer", None), encoder, None), "embedding_size", None)
        return int(size) if size is not None else None


def clip_encoder(clip, what: str = "clip") -> str:
    """Name of the CLIP's (first) text encoder ('clip_l', 'clip_h', ...)."""
    return clip_encoders(clip, what)[0]


def check_clip(clip, family: str, what: str = "clip") -> list[str]:
    """The CLIP's text encoders, checked against the family's; an error names both when they differ."""
    encoders = clip_encoders(clip, what)
    spec = get_family(family)
    if encoders != list(spec.encoder_names):
        have = f"a {encoders[0]} text encoder" if len(encoders) == 1 else f"{' + '.join(encoders)} text encoders"
        raise UserError(f"{what}: this CLIP has {have}, but the {spec.label} model needs "
                        f"{' + '.join(spec.encoder_names)}; connect the CLIP of the same checkpoint")
    return encoders


def base_state_dict(model) -> dict:
    """The MODEL's denoiser weights without the patches ComfyUI may have merged into them while it is loaded (their
    originals wait in the patcher's backup, shared by its clones): the checkpoint's weights, loaded or not."""
    state = model.model.diffusion_model.state_dict()
    for key, backup in model.backup.items():
        name = key.removeprefix("diffusion_model.")
        if key.startswith("diffusion_model.") and name in state:
            state[name] = backup.weight
    return state


def unet_fingerprint(model) -> str:
    """Fingerprint of the MODEL's base denoiser weights, as the engine stores it in packs (no conversion)."""
    from ..bas_engine.fingerprint import model_fingerprint

    return model_fingerprint(base_state_dict(model))
