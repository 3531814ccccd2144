"""Names of weights across formats: packs (diffusers / transformers names) and ComfyUI's model and CLIP.

UNet: packs name weights the diffusers way ("down_blocks.1.attentions.0...."); ComfyUI's model and single-file
checkpoints the LDM way ("input_blocks.4.1...."). The mapping is read from the names alone (which slot of a block
holds a ResNet, an attention or a resampler is told by the weights under it), so it needs neither diffusers nor a
model config beyond the ResNets per level, and it covers every kind of mid block (with a transformer, ResNets only).
Text encoders: packs use transformers' CLIP names without ``text_model.``; ComfyUI's CLIP the family table's
``comfy_prefix``.
"""
from __future__ import annotations

from .families import TextEncoderSpec

#: LDM -> diffusers names of the ResNet parts
RESNET_L2D = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
              "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
#: LDM -> diffusers names of the modules outside the blocks (SDXL's extra embedding: label_emb -> add_embedding)
TOP_L2D = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
           "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
           "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2"}
_ATTENTION_PARTS = {"norm", "proj_in", "proj_out", "transformer_blocks"}


def _resnet(rest: str) -> str:
    for ldm, diffusers in RESNET_L2D.items():
        if rest == ldm or rest.startswith(ldm + "."):
            return diffusers + rest[len(ldm):]
    raise KeyError(rest)


def _is_attention(rest: str) -> bool:
    return rest.split(".", 1)[0] in _ATTENTION_PARTS


def ldm_to_diffusers_unet_name(name: str, layers_per_block: int) -> str:
    """The diffusers name of one LDM UNet weight or module path (no "diffusion_model." prefix).

    ``layers_per_block``: the ResNets per level of the down path (diffusers' ``layers_per_block``; ComfyUI's
    ``num_res_blocks``). KeyError for a name outside the SD UNet layout.
    """
    for ldm, diffusers in TOP_L2D.items():
        if name == ldm or name.startswith(ldm + "."):
            return diffusers + name[len(ldm):]
    parts = name.split(".")
    kind = parts[0]
    if kind == "middle_block":
        slot, rest = int(parts[1]), ".".join(parts[2:])
        if _is_attention(rest):
            return f"mid_block.attentions.0.{rest}"
        # with a transformer the ResNets sit at slots 0 and 2, without one at 0 and 1
        return f"mid_block.resnets.{0 if slot == 0 else 1}.{_resnet(rest)}"
    if kind not in ("input_blocks", "output_blocks") or len(parts) < 4:
        raise KeyError(name)
    index, slot, rest = int(parts[1]), int(parts[2]), ".".join(parts[3:])
    per_level = layers_per_block + 1
    if kind == "input_blocks":
        level, j = (index - 1) // per_level, (index - 1) % per_level
        if j == layers_per_block:                  # the level's downsampler: input_blocks.n.0.op(.weight)
            head, dot, tail = rest.partition(".")
            return f"down_blocks.{level}.downsamplers.0.conv{dot}{tail}"
        if slot == 0:
            return f"down_blocks.{level}.resnets.{j}.{_resnet(rest)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"
    level, j = index // per_level, index % per_level
    if slot == 0:
        return f"up_blocks.{level}.resnets.{j}.{_resnet(rest)}"
    if _is_attention(rest):
        return f"up_blocks.{level}.attentions.{j}.{rest}"
    return f"up_blocks.{level}.upsamplers.0.{rest}"      # output_blocks.n.{1|2}.conv.*


def ldm_to_diffusers_unet_keys(names, layers_per_block: int) -> dict[str, str]:
    """{LDM name: diffusers name} for every name given (weights or module paths)."""
    return {name: ldm_to_diffusers_unet_name(name, layers_per_block) for name in names}


def diffusers_to_comfy_clip_keys(names, encoder: TextEncoderSpec) -> dict[str, str]:
    """transformers CLIPTextModel parameter name (with or without ``text_model.``) -> ComfyUI CLIP patcher key
    (the encoder's ``comfy_prefix``, e.g. ``clip_l.transformer.text_model.*``)."""
    prefix = encoder.comfy_prefix
    # the pooled encoder's projection sits beside the text model: clip_g.transformer.text_projection.weight
    beside = prefix.removesuffix("text_model.")
    return {n: (beside + n if n == "text_projection.weight" else prefix + n.removeprefix("text_model."))
            for n in names if not n.endswith("position_ids")}
