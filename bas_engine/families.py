"""The model families the method supports: everything that differs between them, one entry per family.

This module is plain data (no torch, diffusers or transformers), so the node pack can read it at import time.
Adding a family means adding an entry here, plus code only for what is really new (for example a second text
encoder); the rest of the engine reads the entry instead of asking ``if family == ...``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family, and how every format around it names it."""

    #: the encoder's name in ComfyUI's CLIP (tokenizer attribute, patch-key prefix), in packs and embedding files
    name: str
    #: hidden width of the packaged default config (single-file checkpoints read the real width from the weights)
    width: int
    #: key prefix of its weights in an original (LDM / A1111) single-file checkpoint
    checkpoint_prefix: str
    #: "hf": transformers CLIP key names under the prefix; "openclip": OpenCLIP's (fused qkv, resblocks)
    checkpoint_layout: str
    #: the diffusers convention drops the last transformer layer when converting (SD2: conditioning on the
    #: penultimate layer, followed by the final layer norm, is then the converted model's last hidden state)
    drop_last_layer: bool
    #: which hidden state conditions the UNet: "last" (after the final layer norm) or "penultimate"
    #: (hidden_states[-2], no final norm: SDXL)
    hidden_state: str
    #: packaged transformers config used for single-file checkpoints (bas_engine/configs)
    config_file: str
    #: key prefix of its weights in ComfyUI's CLIP ModelPatcher (weight patches)
    comfy_prefix: str
    #: key of its token lists in what ComfyUI's tokenizer returns ("l" for clip_l: {"l": [[(token, weight), ...]]})
    comfy_tokens: str
    #: prefix of its modules in a kohya LoRA file
    kohya_prefix: str
    #: key of its vector in an embedding file; None: the file has one key, the token (SD1.x / SD2.x custom)
    embedding_key: str | None = None
    #: padding token of the tokenizer when it differs from CLIP's end-of-text (OpenCLIP pads with "!")
    pad_token: str | None = None
    #: attribute path, in ComfyUI's encoder module (``SDClipModel``), of its list of transformer layers
    comfy_layers: str = "transformer.text_model.encoder.layers"
    #: phase 2's train_text_encoder adapts it (False: only its handle rows train, e.g. Flux's T5)
    trainable: bool = True


@dataclass(frozen=True)
class Family:
    """A Stable-Diffusion model family: its text encoders, UNet conventions and how other tools name it."""

    key: str                                  # "sd1", stored in packs
    label: str                                # how errors and the UI name it: "SD1.x"
    context_dim: int                          # cross-attention width of the UNet
    text_encoders: tuple[TextEncoderSpec, ...]
    #: ComfyUI model_config class names (comfy/supported_models.py) of this family
    comfy_model_configs: tuple[str, ...]
    #: diffusers UNet config: attention upcast to fp32 (SD2's convention)
    upcast_attention: bool = False
    #: UNet blocks whose cross-attention layers at 1/4 of the latent resolution feed the attention loss;
    #: the paper used the down and up blocks
    attention_blocks: tuple[str, ...] = ("down", "up")
    #: diffusers' ``addition_embed_type`` of the UNet (extra conditioning beside the text); None for SD1/SD2
    addition_embed_type: str | None = None
    #: the side, in pixels, the family was trained at (the default training resolution)
    native_resolution: int = 512
    #: what the denoiser may predict (diffusers' prediction_type); the first is assumed when a checkpoint
    #: cannot tell (an SD2 768-v checkpoint looks like a 512 epsilon one: the caller must say v_prediction)
    prediction_types: tuple[str, ...] = ("epsilon", "v_prediction")
    #: the encoder whose projected end-of-text state is the UNet's pooled text input (SDXL's "text_time"
    #: extra conditioning, with the size/crop time ids); None: the UNet takes only the token states
    pooled_encoder: str | None = None
    #: the VAE's latent scaling factor (single-file checkpoints do not store it)
    vae_scaling_factor: float = 0.18215
    #: the denoiser's architecture: "unet" (SD's UNet, cross-attention to the text) or "flux" (a DiT with joint
    #: text-image attention); the node pack's ComfyUI adapter picks its denoiser parts by this key
    denoiser: str = "unet"
    #: the encoders whose token states form the denoiser's text context (concatenated in this order); the handles'
    #: attention columns are their positions in the first one. None: every encoder (SD1, SD2, SDXL)
    context_encoders: tuple[str, ...] | None = None
    #: phase 2 may fine-tune the whole denoiser (mode "full"); False where it cannot be done in practice
    full_finetune: bool = True
    #: the engine's own diffusers path (``bas extract``, the Python API) can load and train it; False: ComfyUI only
    diffusers_path: bool = True
    #: the denoiser takes a distilled guidance value beside the text (Flux dev; ComfyUI's FluxGuidance sets it):
    #: training gives it TrainConfig.guidance, the Concept Prompt Encoder the user's value
    guidance_input: bool = False

    @property
    def encoder_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.text_encoders)

    @property
    def context_encoder_names(self) -> tuple[str, ...]:
        return self.context_encoders or self.encoder_names

    def encoder(self, name: str) -> TextEncoderSpec:
        for spec in self.text_encoders:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.label} has no text encoder {name!r} (it has {', '.join(self.encoder_names)})")


SD1 = Family(
    key="sd1", label="SD1.x", context_dim=768, comfy_model_configs=("SD15",),
    text_encoders=(TextEncoderSpec(
        name="clip_l", width=768, checkpoint_prefix="cond_stage_model.transformer.", checkpoint_layout="hf",
        drop_last_layer=False, hidden_state="last", config_file="sd1_text_encoder.json",
        comfy_prefix="clip_l.transformer.text_model.", comfy_tokens="l", kohya_prefix="lora_te"),),
)

SD2 = Family(
    key="sd2", label="SD2.x", context_dim=1024, comfy_model_configs=("SD20",), upcast_attention=True,
    text_encoders=(TextEncoderSpec(
        name="clip_h", width=1024, checkpoint_prefix="cond_stage_model.model.", checkpoint_layout="openclip",
        drop_last_layer=True, hidden_state="last", config_file="sd2_text_encoder.json",
        comfy_prefix="clip_h.transformer.text_model.", comfy_tokens="h", kohya_prefix="lora_te",
        pad_token="!"),),
)

SDXL = Family(
    key="sdxl", label="SDXL", context_dim=2048, native_resolution=1024, addition_embed_type="text_time",
    pooled_encoder="clip_g", vae_scaling_factor=0.13025,
    # the distilled SDXL shapes ComfyUI detects (comfy/supported_models.py) take the same conditioning
    comfy_model_configs=("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"),
    # SDXL's mid block sits at 1/4 of the latent resolution too (SD1/SD2's is at 1/8). It is left out: the
    # official code aggregates the maps of the "down" and "up" blocks only (from_where=("up", "down")), and
    # the down and up blocks at 1/4 already give 50 layers (2x10 + 3x10) of full SDXL; no measurement here
    # says the mid block's 10 would make better maps, so the method's selection stays as published.
    attention_blocks=("down", "up"),
    text_encoders=(
        TextEncoderSpec(
            name="clip_l", width=768, checkpoint_prefix="conditioner.embedders.0.transformer.",
            checkpoint_layout="hf", drop_last_layer=False, hidden_state="penultimate",
            config_file="sd1_text_encoder.json", comfy_prefix="clip_l.transformer.text_model.", comfy_tokens="l",
            kohya_prefix="lora_te1", embedding_key="clip_l"),
        TextEncoderSpec(
            name="clip_g", width=1280, checkpoint_prefix="conditioner.embedders.1.model.",
            checkpoint_layout="openclip", drop_last_layer=False, hidden_state="penultimate",
            config_file="sdxl_text_encoder_2.json", comfy_prefix="clip_g.transformer.text_model.", comfy_tokens="g",
            kohya_prefix="lora_te2", embedding_key="clip_g", pad_token="!"),
    ),
)

FLUX = Family(
    key="flux", label="Flux.1", context_dim=4096, native_resolution=1024, denoiser="flux",
    comfy_model_configs=("Flux", "FluxSchnell"),
    # flow matching: the model predicts the velocity (noise - image) along the straight path of its shifted sigmas
    prediction_types=("flow",),
    # the transformer reads T5's token states; CLIP-L gives only the pooled vector (ComfyUI's FluxClipModel)
    context_encoders=("t5xxl",), pooled_encoder="clip_l",
    # ComfyUI's Flux latent format scales and shifts; the adapter uses the model's own process_latent_in
    vae_scaling_factor=0.3611,
    # the joint attention of the double-stream blocks: image queries against the handle tokens of T5's states.
    # Why not the single blocks too: there the text tokens have passed 19 joint attentions and share the image's
    # weights, so a handle's column is less the handle's own; reasoned, not measured (random weights make no
    # meaningful map; docs/FLUX.md, "Not measured", says how to measure it on real weights)
    attention_blocks=("double",),
    # 12B parameters: a full fine-tune needs ~200 GB for weights, gradients and Adam's state
    full_finetune=False, diffusers_path=False,
    # dev's guidance distillation (schnell's transformer has no guidance input and ignores the value)
    guidance_input=True,
    text_encoders=(
        TextEncoderSpec(
            name="t5xxl", width=4096, checkpoint_prefix="text_encoders.t5xxl.transformer.", checkpoint_layout="t5",
            drop_last_layer=False, hidden_state="last", config_file="", comfy_prefix="t5xxl.transformer.",
            comfy_tokens="t5xxl", kohya_prefix="lora_te2", embedding_key="t5xxl",
            comfy_layers="transformer.encoder.block", trainable=False),
        TextEncoderSpec(
            name="clip_l", width=768, checkpoint_prefix="text_encoders.clip_l.transformer.", checkpoint_layout="hf",
            drop_last_layer=False, hidden_state="last", config_file="sd1_text_encoder.json",
            comfy_prefix="clip_l.transformer.text_model.", comfy_tokens="l", kohya_prefix="lora_te1",
            embedding_key="clip_l"),
    ),
)

#: every supported family by key, in the order errors list them
FAMILIES: dict[str, Family] = {f.key: f for f in (SD1, SD2, SDXL, FLUX)}


def get_family(key: str) -> Family:
    """The family entry for a key stored in a pack or a components object."""
    try:
        return FAMILIES[key]
    except KeyError:
        raise KeyError(f"unknown model family {key!r}; known: {', '.join(FAMILIES)}") from None


def supported_labels(diffusers: bool = False) -> str:
    """'SD1.x, SD2.x, SDXL and Flux.1' (for error messages); ``diffusers``: only the families the engine's own
    diffusers path loads."""
    labels = [f.label for f in FAMILIES.values() if f.diffusers_path or not diffusers]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def family_label(key: str) -> str:
    """How errors name a family key, also one this version does not know."""
    return FAMILIES[key].label if key in FAMILIES else key


#: diffusers ``addition_embed_type`` values that a UNet computes from the text token states alone, so the caller
#: passes nothing more and the family is the one without extra conditioning: "text" attention-pools the token states
#: into a vector added to the time embedding (DeepFloyd IF's design; the toy world's v2t model)
SELF_CONTAINED_ADDITIONS = ("text",)


def family_for_unet(context_dim: int, addition_embed_type: str | None = None) -> Family | None:
    """The family of a UNet with this cross-attention width and extra conditioning; None when none fits."""
    for family in FAMILIES.values():
        if family.denoiser == "unet" and family.context_dim == context_dim \
                and family.addition_embed_type == addition_embed_type:
            return family
    return None


def family_for_comfy_config(class_name: str) -> Family | None:
    """The family of a ComfyUI model_config class (``type(model.model.model_config).__name__``)."""
    for family in FAMILIES.values():
        if class_name in family.comfy_model_configs:
            return family
    return None


def family_for_checkpoint_keys(keys) -> Family | None:
    """The family whose text encoders' checkpoint prefixes the keys of a single-file checkpoint use."""
    keys = list(keys)
    for family in FAMILIES.values():
        if family.diffusers_path and all(any(k.startswith(spec.checkpoint_prefix) for k in keys) for spec in family.text_encoders):
            return family
    return None
