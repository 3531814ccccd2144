"""A UNet's configuration from its original (LDM / ComfyUI) weights or config, and the diffusers config for it.

The layout is read from the weights (or from an LDM-style ``unet_config`` such as ComfyUI's
``model.model.model_config.unet_config``), so non-standard shapes (a two-level UNet, tiny test models, every kind
of mid block) convert as well as the real thing; a layout diffusers cannot hold is a ModelError that says why.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from .errors import ModelError
from .families import SD1, family_for_unet, get_family, supported_labels


def _count(keys, pattern: str) -> int:
    """Number of distinct integer indices {i} such that some key starts with pattern.format(i)."""
    rx = re.compile("^" + re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return (max(found) + 1) if found else 0


#: the kinds of mid block, as ComfyUI's ``transformer_depth_middle`` tells them (>= 1: a transformer of that depth
#: between two ResNets) and diffusers' ``mid_block_type`` builds them
MID_RESNET_ONLY, MID_NONE = -1, -2


def middle_block_depth(keys) -> int:
    """The mid block's kind from the weights' names: its transformer depth, ``MID_RESNET_ONLY`` (one ResNet, no
    attention) or ``MID_NONE`` (no mid block), read as ComfyUI's model detection reads it."""
    keys = list(keys)
    if "middle_block.1.proj_in.weight" in keys:
        return _count(keys, "middle_block.1.transformer_blocks.{}.")
    if "middle_block.0.in_layers.0.weight" in keys:
        return MID_RESNET_ONLY
    return MID_NONE


def mid_block_type(middle_depth: int) -> str | None:
    """diffusers' ``mid_block_type`` for a mid block of that kind (``middle_block_depth``)."""
    if middle_depth >= 1:
        return "UNetMidBlock2DCrossAttn"
    if middle_depth == MID_RESNET_ONLY:
        return "UNetMidBlock2D"
    if middle_depth == MID_NONE:
        return None
    raise ModelError(f"the UNet's mid block has a transformer of depth {middle_depth}; supported: a transformer of "
                     "depth 1 or more between two ResNets, one ResNet alone, or no mid block")


def describe_unet_layout(ldm_unet_config: Mapping[str, Any]) -> str:
    """What a UNet looks like, in words (for errors about layouts the converter cannot map)."""
    cfg = _normalize_ldm_unet_config(ldm_unet_config)
    middle = cfg["transformer_depth_middle"]
    mid = {MID_RESNET_ONLY: "a mid block of one ResNet", MID_NONE: "no mid block"}.get(
        middle, f"a mid block with a transformer of depth {middle}")
    return (f"{len(cfg['channel_mult'])} levels of {[cfg['model_channels'] * m for m in cfg['channel_mult']]} "
            f"channels, {cfg['num_res_blocks']} ResNets per level, transformer depths {cfg['transformer_depth']} "
            f"(output blocks {cfg.get('transformer_depth_output')}), {mid}")


def ldm_unet_config_from_weights(unet_sd: Mapping[str, torch.Tensor]) -> dict:
    """Read an LDM-style UNet config from openaimodel weights (keys without ``model.diffusion_model.``).

    Head counts are not visible in the weights; the SD convention is used (context 768 or a conv
    ``proj_in``: 8 heads; otherwise 64 channels per head when that divides the width, else 8 heads).
    Pass ``unet_config`` to :func:`components_from_ldm` to override.
    """
    keys = list(unet_sd)
    if "input_blocks.0.0.weight" not in unet_sd:
        raise ModelError("no UNet weights (model.diffusion_model.input_blocks.0.0.weight is missing)")
    # SDXL's added embedding (pooled text + time ids); unCLIP's image embedding has the same key
    adm_in_channels = int(unet_sd["label_emb.0.0.weight"].shape[1]) if "label_emb.0.0.weight" in unet_sd else None
    conv_in = unet_sd["input_blocks.0.0.weight"]
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    out_channels = int(unet_sd["out.2.weight"].shape[0])
    n_in = _count(keys, "input_blocks.{}.")

    def depth(prefix: str) -> int:
        return _count(keys, prefix + ".1.transformer_blocks.{}.")

    channel_mult, num_res_blocks, transformer_depth = [], [], []
    level_blocks, level_depths, ch = 0, [], model_channels
    for i in range(1, n_in):
        if f"input_blocks.{i}.0.op.weight" in unet_sd:          # downsampler closes a level
            channel_mult.append(ch // model_channels)
            num_res_blocks.append(level_blocks)
            transformer_depth.extend(level_depths)
            level_blocks, level_depths = 0, []
            continue
        ch = int(unet_sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
        level_blocks += 1
        level_depths.append(depth(f"input_blocks.{i}"))
    channel_mult.append(ch // model_channels)
    num_res_blocks.append(level_blocks)
    transformer_depth.extend(level_depths)

    n_out = _count(keys, "output_blocks.{}.")
    transformer_depth_output = [depth(f"output_blocks.{i}") for i in range(n_out)]
    middle = middle_block_depth(keys)

    context_dim, use_linear = None, False
    for k in keys:
        if k.endswith("attn2.to_k.weight"):
            context_dim = int(unet_sd[k].shape[1])
            break
    for k in keys:
        if k.endswith(".proj_in.weight"):
            use_linear = unet_sd[k].ndim == 2
            break
    cfg: dict[str, Any] = dict(
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
        channel_mult=channel_mult, num_res_blocks=num_res_blocks, transformer_depth=transformer_depth,
        transformer_depth_middle=middle, transformer_depth_output=transformer_depth_output,
        context_dim=context_dim, use_linear_in_transformer=use_linear, adm_in_channels=adm_in_channels)
    if context_dim == 768 or not use_linear or model_channels % 64:
        cfg.update(num_heads=8, num_head_channels=-1)
    else:
        cfg.update(num_heads=-1, num_head_channels=64)
    return cfg


def _normalize_ldm_unet_config(cfg: Mapping[str, Any]) -> dict:
    """Bring ComfyUI-style (per-block lists) and original-yaml-style (ints + attention_resolutions) configs
    to one form: per-level lists ``num_res_blocks``, ``transformer_depth`` and an int middle depth."""
    cfg = dict(cfg)
    if "params" in cfg and "model_channels" not in cfg:                   # {"target":..., "params": {...}}
        cfg = dict(cfg["params"])
    mult = list(cfg["channel_mult"])
    levels = len(mult)
    nrb = cfg.get("num_res_blocks", 2)
    nrb = [int(nrb)] * levels if isinstance(nrb, int) else [int(n) for n in nrb]
    td = cfg.get("transformer_depth", 1)
    if isinstance(td, int) or td is None:
        td = 1 if td is None else td
        att = cfg.get("attention_resolutions")
        per_level, ds = [], 1
        for lvl in range(levels):
            per_level.append(td if (att is None or ds in att) else 0)
            ds *= 2
        middle = cfg.get("transformer_depth_middle", td)
    else:
        td = [int(t) for t in td]
        if len(td) == levels:
            per_level = td
        elif len(td) == sum(nrb):
            per_level, i = [], 0
            for lvl in range(levels):
                block = td[i:i + nrb[lvl]]
                if len(set(block)) != 1:
                    raise ModelError(f"UNet level {lvl} mixes transformer depths {block}; diffusers cannot hold that")
                per_level.append(block[0])
                i += nrb[lvl]
        else:
            raise ModelError(f"transformer_depth {td} does not fit channel_mult {mult} / num_res_blocks {nrb}")
        middle = cfg.get("transformer_depth_middle", per_level[-1])
    if middle is None:
        middle = per_level[-1]
    context = cfg.get("context_dim")
    if isinstance(context, (list, tuple)):
        context = context[0]
    out = dict(
        in_channels=int(cfg.get("in_channels", 4)), out_channels=int(cfg.get("out_channels", 4)),
        model_channels=int(cfg["model_channels"]), channel_mult=mult, num_res_blocks=nrb,
        transformer_depth=per_level, transformer_depth_middle=int(middle),
        context_dim=int(context) if context is not None else None,
        use_linear_in_transformer=bool(cfg.get("use_linear_in_transformer", False)),
        num_heads=int(cfg.get("num_heads", -1) or -1), num_head_channels=int(cfg.get("num_head_channels", -1) or -1),
        adm_in_channels=cfg.get("adm_in_channels"), transformer_depth_output=cfg.get("transformer_depth_output"))
    if out["num_heads"] <= 0 and out["num_head_channels"] <= 0:
        out["num_heads"] = 8
    return out


def diffusers_unet_config(ldm_unet_config: Mapping[str, Any], *, family: str | None = None,
                          sample_size: int = 64, pooled_dim: int = 1280) -> dict:
    """diffusers ``UNet2DConditionModel`` config for an LDM-style UNet config (ComfyUI or yaml style).

    SDXL's added embedding takes ``adm_in_channels`` = 6 time ids x ``addition_time_embed_dim`` + ``pooled_dim``
    (the pooled encoder's projection width, 1280 for OpenCLIP-G).
    """
    cfg = _normalize_ldm_unet_config(ldm_unet_config)
    mc, mult, nrb, depth = cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"], cfg["transformer_depth"]
    if len(set(nrb)) != 1:
        raise ModelError(f"num_res_blocks {nrb} differs between levels; diffusers needs one value")
    if cfg["context_dim"] is None:
        raise ModelError("the UNet has no cross-attention (context_dim); not a text-to-image SD model")
    middle = cfg["transformer_depth_middle"]
    mid_type = mid_block_type(middle)
    used = sorted({d for d in depth if d > 0} | ({middle} if middle > 0 else set()))
    if len(used) <= 1:
        layers: Any = used[0] if used else 1
    else:
        if middle > 0 and middle != depth[-1]:
            raise ModelError(f"the UNet's mid block has a transformer of depth {middle} and its deepest level one "
                             f"of depth {depth[-1]}; one diffusers config holds them only when they are equal")
        layers = [max(d, 1) for d in depth]
    channels = [mc * m for m in mult]
    if cfg["num_head_channels"] > 0:
        heads: Any = [c // cfg["num_head_channels"] for c in channels]
        if len(set(heads)) == 1:
            heads = heads[0]
    else:
        heads = cfg["num_heads"]
    spec = get_family(family) if family else (family_for_unet(cfg["context_dim"]) or SD1)
    extra: dict[str, Any] = {}
    adm = cfg.get("adm_in_channels")
    if spec.addition_embed_type == "text_time":
        if not adm or (adm - pooled_dim) <= 0 or (adm - pooled_dim) % 6:
            raise ModelError(f"{spec.label} UNet: added embedding input {adm} does not fit 6 time ids plus a "
                             f"{pooled_dim}-wide pooled text embedding")
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=(adm - pooled_dim) // 6,
                     projection_class_embeddings_input_dim=adm)
    elif adm:
        raise ModelError(f"this UNet has an extra (ADM) embedding of {adm} inputs, which {spec.label} models do not "
                         f"have (an unCLIP or other variant?); supported: {supported_labels(diffusers=True)}")
    if cfg.get("transformer_depth_output"):
        # the up blocks must mirror the down blocks (distilled variants that thin the decoder unevenly cannot
        # be held by one diffusers config here)
        per_block = len(cfg["transformer_depth_output"]) // len(depth)
        mirrored = [d for d in reversed(depth) for _ in range(per_block)]
        # output-block order (as read from weights) or ComfyUI's, level 0 first (its UNet pops from the end)
        if list(cfg["transformer_depth_output"]) not in (mirrored, mirrored[::-1]):
            raise ModelError(f"UNet output transformer depths {list(cfg['transformer_depth_output'])} do not mirror "
                             f"the input depths {depth}; this layout is not supported")
    return dict(**extra,
        sample_size=sample_size,
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
        down_block_types=["CrossAttnDownBlock2D" if d > 0 else "DownBlock2D" for d in depth],
        up_block_types=["CrossAttnUpBlock2D" if d > 0 else "UpBlock2D" for d in reversed(depth)],
        mid_block_type=mid_type,
        block_out_channels=channels, layers_per_block=nrb[0],
        cross_attention_dim=cfg["context_dim"], attention_head_dim=heads,
        use_linear_projection=cfg["use_linear_in_transformer"],
        transformer_layers_per_block=layers,
        norm_num_groups=32, upcast_attention=spec.upcast_attention,
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu", center_input_sample=False,
        downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5)
