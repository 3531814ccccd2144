"""Original LDM / ComfyUI checkpoints <-> diffusers + transformers modules, without the hub.

An SD1.x / SD2.x "single file" checkpoint (and the state dict ComfyUI keeps for a loaded model) uses the
original CompVis key names::

    model.diffusion_model.*                         UNet (openaimodel)
    first_stage_model.*                             VAE
    cond_stage_model.transformer.text_model.*       SD1: CLIP-L (HF layout)
    cond_stage_model.model.*                        SD2: OpenCLIP-H (fused in_proj, resblocks)

The UNet configuration is read from the weights (or from an LDM-style ``unet_config`` such as ComfyUI's
``model.model.model_config.unet_config``) by ``unet_config``, so non-standard shapes (a two-level UNet, tiny test
models) convert as well as the real thing.  The key conversion itself is diffusers' own
(``diffusers.loaders.single_file_utils``); every config is passed explicitly so nothing reaches for the hub.

The UNet's reverse map (``diffusers_to_ldm_unet_keys``) and ``diffusers_to_comfy_clip_keys`` are here: they
hand weight deltas to ComfyUI (``ModelPatcher.add_patches`` keys ``diffusion_model.<ldm name>`` and the text
encoder's ``comfy_prefix``). Writing whole checkpoints is only needed by tests: ``bas_engine.testing``.
The text encoders' key prefixes and layouts come from the family table (``families.py``).

This module never imports ComfyUI.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .components import SDComponents
from . import weight_names
from .errors import ModelError
from .families import SD1, TextEncoderSpec, family_for_checkpoint_keys, get_family, supported_labels
# The UNet's configuration (read from weights, or from ComfyUI's unet_config) is its own module; its public names
# stay importable from here, where ENGINE_API.md lists them.
from .unet_config import (  # noqa: F401
    MID_NONE, MID_RESNET_ONLY, _count, describe_unet_layout, diffusers_unet_config, ldm_unet_config_from_weights,
    mid_block_type, middle_block_depth,
)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# The text encoders' prefixes (and ComfyUI's names for them) are in the family table (families.py).


def _static_config(name: str) -> dict:
    with open(os.path.join(CONFIG_DIR, name), encoding="utf-8") as fh:
        cfg = json.load(fh)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------------------------
# UNet keys: diffusers -> LDM
# --------------------------------------------------------------------------------------------------------------

_RESNET_D2L = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP_D2L = dict(sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
_TOP_D2L.update(sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])   # SDXL's add_embedding -> label_emb


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_D2L[head]}.{tail}" if head in _RESNET_D2L else rest


def _unet_names_and_config(unet_or_config) -> tuple[list[str], Mapping[str, Any]]:
    if isinstance(unet_or_config, torch.nn.Module):
        return list(unet_or_config.state_dict().keys()), unet_or_config.config
    config = dict(unet_or_config)
    with torch.device("meta"):
        model = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return list(model.state_dict().keys()), model.config


def diffusers_to_ldm_unet_keys(unet_config_or_unet) -> dict[str, str]:
    """Map every diffusers UNet parameter name to its LDM (openaimodel) name, without any prefix.

    ComfyUI's ``ModelPatcher.add_patches`` wants ``"diffusion_model." + ldm_name``; an original
    checkpoint wants ``"model.diffusion_model." + ldm_name``.  Accepts a UNet2DConditionModel or its config.
    """
    names, config = _unet_names_and_config(unet_config_or_unet)
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ModelError("layers_per_block must be one int for an LDM UNet")
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, str] = {}
    for name in names:
        if name in _TOP_D2L:
            out[name] = _TOP_D2L[name]
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                out[name] = f"input_blocks.{1 + b * (lpb + 1) + j}.0.{_resnet_rest(rest)}"
            elif kind == "attentions":
                out[name] = f"input_blocks.{1 + b * (lpb + 1) + j}.1.{rest}"
            elif kind == "downsamplers":             # down_blocks.b.downsamplers.0.conv.weight
                out[name] = f"input_blocks.{(b + 1) * (lpb + 1)}.0.op.{'.'.join(parts[5:])}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                out[name] = f"middle_block.{2 * j}.{_resnet_rest(rest)}"
            elif kind == "attentions":
                out[name] = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            base = b * (lpb + 1)
            if kind == "resnets":
                out[name] = f"output_blocks.{base + j}.0.{_resnet_rest(rest)}"
            elif kind == "attentions":
                out[name] = f"output_blocks.{base + j}.1.{rest}"
            elif kind == "upsamplers":
                slot = 2 if up_has_attn[b] else 1
                out[name] = f"output_blocks.{base + lpb}.{slot}.conv.{'.'.join(parts[5:])}"
        if name not in out:
            raise ModelError(f"no LDM name for UNet parameter {name!r}")
    return out


# --------------------------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------------------------

def vae_config_from_weights(vae_sd: Mapping[str, torch.Tensor], scaling_factor: float = 0.18215) -> dict:
    """diffusers AutoencoderKL config from LDM VAE weights (keys without ``first_stage_model.``)."""
    keys = list(vae_sd)
    if "encoder.conv_in.weight" not in vae_sd:
        raise ModelError("no VAE weights (first_stage_model.encoder.conv_in.weight is missing)")
    ch = int(vae_sd["encoder.conv_in.weight"].shape[0])
    levels = _count(keys, "encoder.down.{}.")
    chans = [int(vae_sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)]
    cfg = _static_config("sd_vae.json")
    cfg.update(
        in_channels=int(vae_sd["encoder.conv_in.weight"].shape[1]),
        out_channels=int(vae_sd["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(vae_sd["decoder.conv_in.weight"].shape[1]),
        block_out_channels=chans, layers_per_block=_count(keys, "encoder.down.0.block.{}."),
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        scaling_factor=scaling_factor)
    if ch != chans[0]:
        raise ModelError("unexpected VAE layout (first level width differs from conv_in)")
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------------------------------

def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def text_encoder_config_from_weights(te_sd: Mapping[str, torch.Tensor], encoder: TextEncoderSpec) -> dict:
    """CLIPTextConfig kwargs from converted (transformers-layout, no ``text_model.``) text-encoder weights."""
    base = _static_config(encoder.config_file)
    tok = te_sd["embeddings.token_embedding.weight"]
    hidden = int(tok.shape[1])
    heads = base["num_attention_heads"] if hidden == base["hidden_size"] else max(1, hidden // 64)
    base.update(
        vocab_size=int(tok.shape[0]), hidden_size=hidden, num_attention_heads=heads,
        max_position_embeddings=int(te_sd["embeddings.position_embedding.weight"].shape[0]),
        intermediate_size=int(te_sd["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=_count(list(te_sd), "encoder.layers.{}."))
    if base["vocab_size"] <= max(base.get("bos_token_id", 0), base.get("pad_token_id", 0), base["eos_token_id"]):
        base.update(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return base


def _convert_text_encoder(state_dict: Mapping[str, torch.Tensor], encoder: TextEncoderSpec,
                          keep_projection: bool = False) -> dict[str, torch.Tensor]:
    """The encoder's checkpoint weights in transformers CLIPTextModel names (no ``text_model.``); with
    ``keep_projection`` also ``text_projection.weight`` (SDXL's pooled OpenCLIP-G)."""
    prefix = encoder.checkpoint_prefix
    sd = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    if encoder.checkpoint_layout == "hf":
        # some SD1 files lack the text_model. level (ComfyUI tolerates that too)
        sd = {(k if k.startswith(prefix + "text_model.") else k.replace(prefix, prefix + "text_model.", 1)): v
              for k, v in sd.items()}
        converted = sfu.convert_ldm_clip_checkpoint(sd, prefix)
    else:
        n = _count(list(sd), prefix + "transformer.resblocks.{}.")
        if encoder.drop_last_layer:
            # conditioning on the penultimate layer: diffusers' text encoder simply drops the last resblock
            last = f"{prefix}transformer.resblocks.{n - 1}."
            sd = {k: v for k, v in sd.items() if not k.startswith(last)}
        width = int(sd[prefix + "token_embedding.weight"].shape[1])
        if not keep_projection or prefix + "text_projection" not in sd:
            sd[prefix + "text_projection"] = torch.empty(width, 0)    # tells the helper the width; dropped
        converted = sfu.convert_open_clip_checkpoint(None, sd, prefix=prefix)
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    converted.pop("embeddings.position_ids", None)
    if not keep_projection:
        converted.pop("text_projection.weight", None)
    elif "text_projection.weight" not in converted:
        raise ModelError(f"the {encoder.name} text encoder has no text_projection (needed for the pooled embedding)")
    converted.pop("logit_scale", None)
    return converted


def diffusers_to_comfy_clip_keys(text_encoder_or_names, encoder: TextEncoderSpec) -> dict[str, str]:
    """``weight_names.diffusers_to_comfy_clip_keys`` of a CLIPTextModel's parameters (or of the names given)."""
    names = (text_encoder_or_names.state_dict().keys() if isinstance(text_encoder_or_names, torch.nn.Module)
             else text_encoder_or_names)
    return weight_names.diffusers_to_comfy_clip_keys(names, encoder)


# --------------------------------------------------------------------------------------------------------------
# Whole checkpoints
# --------------------------------------------------------------------------------------------------------------

def detect_checkpoint_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The family whose text-encoder keys the checkpoint holds (``family_for_checkpoint_keys``)."""
    family = family_for_checkpoint_keys(state_dict)
    if family is not None:
        return family.key
    if any(k.startswith("conditioner.") for k in state_dict):
        raise ModelError(f"this is an SDXL-style checkpoint (conditioner.*); supported: {supported_labels(diffusers=True)}")
    raise ModelError("no text encoder in the checkpoint (cond_stage_model.* missing)")


def make_scheduler(prediction_type: str | None = None, family: str = SD1.key) -> DDPMScheduler:
    """The family's training scheduler predicting `prediction_type` (default: the family's first)."""
    allowed = get_family(family).prediction_types
    prediction_type = prediction_type or allowed[0]
    if prediction_type not in allowed:
        raise ModelError(f"prediction_type must be {' or '.join(map(repr, allowed))}, not {prediction_type!r}",
                         field="prediction_type")
    cfg = _static_config("sd_scheduler.json")
    cfg["prediction_type"] = prediction_type
    return DDPMScheduler.from_config(cfg)


def load_tokenizer(tokenizer_dir: str, encoder: TextEncoderSpec = SD1.text_encoders[0]) -> CLIPTokenizer:
    """CLIPTokenizer from a local folder (vocab.json + merges.txt), padding as the encoder was trained
    (OpenCLIP pads with "!", id 0)."""
    try:
        tok = CLIPTokenizer.from_pretrained(os.fspath(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"tokenizer folder {tokenizer_dir!r} could not be loaded: {exc}") from exc
    if encoder.pad_token and tok.pad_token != encoder.pad_token:
        tok.pad_token = encoder.pad_token
    return tok


def _load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(dict(sd), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"{what} weights do not fit the inferred config: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")


def components_from_ldm(state_dict: Mapping[str, torch.Tensor], tokenizer_dir: str, *,
                        unet_config: Mapping[str, Any] | None = None, prediction_type: str | None = None,
                        family: str | None = None,
                        text_encoder_config: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
                        dtype: torch.dtype = torch.float32) -> SDComponents:
    """Build diffusers/transformers modules from an original-layout (LDM / ComfyUI) state dict.

    ``unet_config`` is an LDM-style UNet config (ComfyUI's ``model.model.model_config.unet_config`` or a
    yaml ``unet_config.params``); without it the layout is read from the weights.  ``family`` ("sd1" /
    "sd2") defaults to what the text-encoder keys say.  ``prediction_type`` defaults to "epsilon" for both
    families: v-prediction (SD2 768-v) cannot be read from the weights, so the caller must say so.
    The weights are copied into float32 (or ``dtype``) modules; the input dict is not modified.  The modules
    are built under ``torch.inference_mode(False)``, so they are trainable even when called from a ComfyUI
    node (which runs in inference mode, and whose model weights are inference tensors).
    """
    with torch.inference_mode(False):
        return _components_from_ldm(state_dict, tokenizer_dir, unet_config=unet_config,
                                    prediction_type=prediction_type, family=family,
                                    text_encoder_config=text_encoder_config, dtype=dtype)


def _components_from_ldm(state_dict, tokenizer_dir, *, unet_config, prediction_type, family, text_encoder_config,
                         dtype) -> SDComponents:
    fam = family or detect_checkpoint_family(state_dict)
    spec = get_family(fam)
    # the text encoders first: the pooled encoder's projection width is part of the UNet's added embedding
    if text_encoder_config is None or isinstance(text_encoder_config, Mapping):
        te_configs = [text_encoder_config] + [None] * (len(spec.text_encoders) - 1)
    else:
        te_configs = list(text_encoder_config)
    encoders, pooled_dim = [], 1280
    for encoder, te_config in zip(spec.text_encoders, te_configs):
        te_sd = _convert_text_encoder(state_dict, encoder, keep_projection=encoder.name == spec.pooled_encoder)
        te_cfg = dict(te_config) if te_config else text_encoder_config_from_weights(te_sd, encoder)
        if encoder.name == spec.pooled_encoder:
            te_cfg["projection_dim"] = int(te_sd["text_projection.weight"].shape[0])
            pooled_dim = te_cfg["projection_dim"]
            module = CLIPTextModelWithProjection(CLIPTextConfig(**te_cfg))
            te_sd = {("text_projection.weight" if k == "text_projection.weight" else "text_model." + k): v
                     for k, v in te_sd.items()}
        else:
            module = CLIPTextModel(CLIPTextConfig(**te_cfg))
        _load_strict(module, te_sd, f"{encoder.name} text encoder")
        tokenizer = load_tokenizer(tokenizer_dir, encoder)
        # Prompts are padded/truncated to model_max_length: it must fit the text encoder (ComfyUI's bundled
        # tokenizer folder says 8192).
        tokenizer.model_max_length = min(tokenizer.model_max_length, module.config.max_position_embeddings)
        encoders.append((module, tokenizer))

    unet_sd = _strip(state_dict, UNET_PREFIX)
    if not unet_sd:
        raise ModelError("no UNet weights in the checkpoint (model.diffusion_model.* missing)")
    ldm_cfg = dict(unet_config) if unet_config is not None else ldm_unet_config_from_weights(unet_sd)
    ucfg = diffusers_unet_config(ldm_cfg, family=fam, pooled_dim=pooled_dim)
    unet = UNet2DConditionModel.from_config(ucfg)
    try:
        converted = sfu.convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in unet_sd.items()}, ucfg)
        _load_strict(unet, converted, "UNet")
    except (ModelError, KeyError, IndexError, RuntimeError) as exc:
        raise ModelError(f"this UNet's layout cannot be converted: {describe_unet_layout(ldm_cfg)} "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from exc

    vae_sd = _strip(state_dict, VAE_PREFIX)
    vae = AutoencoderKL.from_config(vae_config_from_weights(vae_sd, spec.vae_scaling_factor))
    _load_strict(vae, sfu.convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in vae_sd.items()}, vae.config),
                 "VAE")

    for m in (unet, vae, *(module for module, _ in encoders)):
        if dtype != torch.float32:
            m.to(dtype=dtype)
        m.eval()
        m.requires_grad_(False)
    (text_encoder, tokenizer), *second = encoders
    text_encoder_2, tokenizer_2 = second[0] if second else (None, None)
    return SDComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        noise_scheduler=make_scheduler(prediction_type, fam), family=fam,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Read a .safetensors or .ckpt/.pt/.pth (torch.load(weights_only=True)) state dict."""
    path = os.fspath(path)
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad model file
        raise ModelError(f"checkpoint {path!r} could not be read: {exc}") from exc
    while isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelError(f"checkpoint {path!r} holds no state dict")
    return sd


def load_single_file(path: str, tokenizer_dir: str, prediction_type: str | None = None) -> SDComponents:
    """Load an SD1.x / SD2.x single-file checkpoint (.safetensors, or .ckpt via weights_only torch.load).

    ``prediction_type`` defaults to "epsilon" for SD1 *and* SD2: an SD2 768-v model cannot be told from an
    SD2 512-base model by its weights, so pass ``prediction_type="v_prediction"`` for v models.
    """
    return components_from_ldm(read_checkpoint(path), tokenizer_dir, prediction_type=prediction_type)
