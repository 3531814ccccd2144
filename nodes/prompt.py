"""ConceptPromptEncoder: CLIPTextEncode that understands <asset0> / <concept name>."""
from __future__ import annotations

from comfy_api.latest import io

from .common import CATEGORY, UserError, clip_encoders, user_error
from .inject import has_handles, install_handles
from .types import Concepts, ConceptsType


def rewrite_prompt(text: str, concepts: Concepts) -> str:
    """Write every <asset0> / <concept name> as ' embedding:<pack>_<concept> ' (ComfyUI's embedding syntax).

    The handle syntax and the unknown-handle error are the engine's (``ConceptPack.rewrite_prompt``). The
    spaces around the embedding keep ComfyUI's tokenizer seeing it as its own word (it only recognises
    'embedding:' at the start or after a space) and do not change CLIP's tokens; weights such as
    (<asset0>:1.2) keep working.
    """
    from ..bas_engine.errors import BASError

    stems = dict(zip(concepts.pack.tokens, concepts.stems()))
    try:
        return concepts.pack.rewrite_prompt(text or "", lambda token: f" embedding:{stems[token]} ")
    except BASError as exc:
        raise user_error("text", exc) from exc


def encode(clip, concepts: Concepts, text: str):
    if not isinstance(concepts, Concepts):
        raise UserError(f"concepts: expected BAS_CONCEPTS, got {type(concepts).__name__}")
    encoders = clip_encoders(clip)
    from ..bas_engine.families import FAMILIES

    family = FAMILIES.get(concepts.pack.family)
    if family is not None and encoders != list(family.encoder_names):
        raise UserError(f"concepts: the pack was trained on an {family.label} model (text encoder "
                        f"{', '.join(family.encoder_names)}), but this CLIP has {', '.join(encoders)}")
    rewritten = rewrite_prompt(text, concepts)
    if not has_handles(clip, concepts):
        clip = clip.clone()
        install_handles(clip, concepts)
    return clip.encode_from_tokens_scheduled(clip.tokenize(rewritten), add_dict=size_conditioning(family))


def size_conditioning(family) -> dict:
    """SDXL's size conditioning as ComfyUI's CLIPTextEncodeSDXL sets it by default: original and target size at
    the family's native resolution (1024), no crop. Empty for families without it."""
    if family is None or family.pooled_encoder is None:
        return {}
    side = family.native_resolution
    return {"width": side, "height": side, "crop_w": 0, "crop_h": 0, "target_width": side, "target_height": side}


class ConceptPromptEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptPromptEncoder",
            display_name="Concept Prompt Encoder",
            category=CATEGORY,
            description="Encodes a prompt that names the pack's concepts as <asset0>, <asset1>, ... or by their "
                        "names (<cat>), e.g. 'an oil painting of <asset1> next to <asset0>'. Use the CLIP of the "
                        "Handle Injector to get the pack's text-encoder weights too. ComfyUI's (word:1.2) weights "
                        "and embedding: work as usual.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP to encode with (from the Handle Injector for LoRA packs "
                                              "trained with the text encoder)."),
                ConceptsType.Input("concepts", tooltip="The concept pack whose handles the prompt uses."),
                io.String.Input("text", multiline=True, default="a photo of <asset0>",
                                tooltip="The prompt. <asset0> or <concept name> stands for a concept; an unknown "
                                        "<...> is an error listing the pack's handles."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning",
                                            tooltip="The conditioning for a sampler's positive input.")],
        )

    @classmethod
    def execute(cls, clip, concepts, text: str = "") -> io.NodeOutput:
        return io.NodeOutput(encode(clip, concepts, text))
