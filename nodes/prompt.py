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


def encode(clip, concepts: Concepts, text: str, guidance: float | None = None):
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
    return clip.encode_from_tokens_scheduled(clip.tokenize(rewritten),
                                             add_dict=family_conditioning(family, guidance))


def family_conditioning(family, guidance: float | None = None) -> dict:
    """What a family's denoiser reads beside the text, as ComfyUI's own encoders set it by default.

    SDXL: the size conditioning of CLIPTextEncodeSDXL (original and target size at the native 1024, no crop).
    Flux dev: the distilled guidance, as CLIPTextEncodeFlux / FluxGuidance put it on the conditioning (None:
    TrainConfig's default, the value the pack was trained with). Empty for families with neither.
    """
    if family is None:
        return {}
    extra = {}
    if family.addition_embed_type == "text_time":
        side = family.native_resolution
        extra.update(width=side, height=side, crop_w=0, crop_h=0, target_width=side, target_height=side)
    if family.guidance_input:
        extra["guidance"] = float(default_guidance() if guidance is None else guidance)
    return extra


def default_guidance() -> float:
    """TrainConfig's guidance (the one source of the default, for training and for prompts)."""
    from ..bas_engine.config import setting_info

    return setting_info("guidance")["default"]


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
                io.Float.Input("guidance", default=default_guidance(), min=0.0, max=100.0, step=0.1,
                               tooltip="Flux dev only: the distilled guidance put on the conditioning, as "
                                       "CLIPTextEncodeFlux / FluxGuidance do (the pack was trained at the default). "
                                       "SD1.x / SD2.x / SDXL and Flux schnell ignore it."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning",
                                            tooltip="The conditioning for a sampler's positive input.")],
        )

    @classmethod
    def execute(cls, clip, concepts, text: str = "", guidance: float | None = None) -> io.NodeOutput:
        return io.NodeOutput(encode(clip, concepts, text, guidance))
