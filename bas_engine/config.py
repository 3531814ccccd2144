"""Training settings, with the paper's defaults: the one source of every default, range and help text.

The CLI and the ComfyUI nodes build their options from these fields (``setting_info``), so a default or a
bound is written once, here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import InputError

#: the largest training side accepted at all; memory is checked separately against the device
MAX_RESOLUTION = 4096


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple[str, ...] | None = None, step: int | None = None, optional: bool = False):
    """A TrainConfig field with its help text and bounds (``optional``: None is allowed and means 'auto')."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "step": step, "optional": optional}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Settings of one Break-A-Scene run. Defaults are the paper's (SD 2.1-base, 512 px)."""

    phase1_steps: int = setting(400, "phase 1 steps: only the handle embeddings train (paper: 400)",
                                min=0, max=100000)
    phase2_steps: int = setting(400, "phase 2 steps: handles and denoiser train together (paper: 400)",
                                min=0, max=100000)
    phase1_lr: float = setting(5e-4, "learning rate of the handles in phase 1 (paper: 5e-4)", min=0.0, max=1.0)
    phase2_lr: float | None = setting(None, "learning rate of the denoiser in phase 2; None/0 = auto (1e-4 for "
                                            "LoRA, 2e-6 for full fine-tuning as in the paper)",
                                      min=0.0, max=1.0, optional=True)
    phase2_handle_lr: float = setting(2e-6, "learning rate of the handles in phase 2 (the paper's phase-2 rate)",
                                      min=0.0, max=1.0)
    mode: str = setting("lora", "lora: low-rank adapters on the attention layers (small pack, exports as a LoRA); "
                                "full: fine-tune the whole UNet as the paper does", choices=("lora", "full"))
    lora_rank: int = setting(16, "rank of the LoRA adapters (mode lora)", min=1, max=256)
    lora_alpha: float | None = setting(None, "LoRA alpha; None = the rank (scale 1)", min=0.0, max=4096.0,
                                       optional=True)
    train_text_encoder: bool = setting(False, "phase 2 also adapts the text encoder (LoRA or full)")
    attention_loss_weight: float = setting(0.01, "weight of the cross-attention loss that ties each handle to its "
                                                 "mask (paper: 0.01; 0 turns it off)", min=0.0, max=10.0)
    masked_loss: bool = setting(True, "diffusion loss only inside the chosen concepts' masks (paper: on)")
    union_sampling: bool = setting(True, "each step trains a random subset of the concepts together (paper: on)")
    flip: bool = setting(True, "random horizontal flip of image and masks together")
    resolution: int = setting(512, "training resolution: about resolution² pixels, the aspect ratio is kept",
                              min=64, max=MAX_RESOLUTION, step=64)
    batch_size: int = setting(1, "examples per step, each with its own concept subset and flip", min=1, max=64)
    seed: int = setting(0, "seed of the run (noise, timesteps, concept subsets, flips)", min=0, max=0xFFFFFFFF)
    prior_preservation: bool = setting(False, "also train on generated class images (prior preservation)")
    class_prompt: str = setting("a photo of an object", "prompt of the prior-preservation class images")
    num_class_images: int = setting(20, "number of class images for prior preservation", min=1, max=10000)
    prior_loss_weight: float = setting(1.0, "weight of the prior-preservation loss", min=0.0, max=100.0)
    class_inference_steps: int = setting(30, "sampling steps per class image", min=1, max=1000)
    gradient_checkpointing: str = setting("auto", "recompute activations in backward (less memory, slower): auto = "
                                                  "only where the memory estimate says the run would not fit without "
                                                  "it", choices=("auto", "on", "off"))
    mixed_precision: str = setting("auto", "auto: bf16 (fp16 where bf16 is missing) on CUDA, fp32 on CPU",
                                   choices=("auto", "no", "bf16", "fp16"))
    max_grad_norm: float = setting(1.0, "gradient clipping norm", min=0.0, max=1e6)
    weight_decay: float = setting(1e-2, "AdamW weight decay", min=0.0, max=1.0)
    tokens: list[str] | None = setting(None, "handle tokens, one per concept (default <asset0>, <asset1>, ...)",
                                       optional=True)
    attention_downscale: int = setting(4, "attention maps from the layers at 1/N of the latent resolution",
                                       min=1, max=64)
    guidance: float = setting(3.5, "Flux dev: the distilled guidance the transformer is given while training, as "
                                   "FluxGuidance sets it (3.5: ComfyUI's default; models without it ignore it)",
                              min=0.0, max=100.0)

    def __post_init__(self) -> None:
        # True / False are accepted for gradient_checkpointing (the Python API's earlier spelling)
        if isinstance(self.gradient_checkpointing, bool):
            self.gradient_checkpointing = "on" if self.gradient_checkpointing else "off"

    @property
    def denoiser_lr(self) -> float:
        if self.phase2_lr is not None:
            return self.phase2_lr
        return 1e-4 if self.mode == "lora" else 2e-6

    def validate(self, num_concepts: int) -> None:
        """InputError naming the setting (its ``field``) that is out of range."""
        for name, info in SETTINGS.items():
            value = getattr(self, name)
            if value is None and info["optional"]:
                continue
            if info["choices"] and value not in info["choices"]:
                raise InputError(f"{name} must be one of {', '.join(info['choices'])}, got {value!r}", field=name)
            low, high = info["min"], info["max"]
            if low is not None and not (low <= value <= high):
                raise InputError(f"{name} must be between {low:g} and {high:g}, got {value:g}", field=name)
        if self.tokens is not None:
            if len(self.tokens) != num_concepts:
                raise InputError(f"tokens: {len(self.tokens)} handle tokens for {num_concepts} concepts",
                                 field="tokens")
            for token in self.tokens:
                if not token or any(c.isspace() for c in token) or token != token.lower():
                    raise InputError(f"tokens: handle {token!r} must be one lowercase word without spaces",
                                     field="tokens")

    def to_dict(self) -> dict:
        return asdict(self)


#: every TrainConfig field -> {"default", "help", "min", "max", "choices", "step", "optional"}
SETTINGS: dict[str, dict[str, Any]] = {
    f.name: {"default": f.default, **f.metadata} for f in fields(TrainConfig)}


def setting_info(name: str) -> dict[str, Any]:
    """Default, help text and bounds of one TrainConfig field (for CLI options and node inputs)."""
    return SETTINGS[name]


# Keys of TrainConfig that change the trained result (all but pure speed settings).
RESULT_SETTINGS = tuple(f for f in SETTINGS if f not in ("gradient_checkpointing",))
