"""Training settings, with the paper's defaults."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import InputError


@dataclass
class TrainConfig:
    """Settings of one Break-A-Scene run. Defaults are the paper's (SD 2.1-base, 512 px)."""

    phase1_steps: int = 400
    phase2_steps: int = 400
    phase1_lr: float = 5e-4              # handles only
    phase2_lr: float | None = None       # denoiser: 2e-6 in full mode, 1e-4 for LoRA when None
    phase2_handle_lr: float = 2e-6       # handles keep training in phase 2, at the paper's phase-2 rate
    mode: str = "lora"                   # "lora" | "full"
    lora_rank: int = 16
    lora_alpha: float | None = None      # None: equal to the rank (scale 1)
    train_text_encoder: bool = False     # phase 2: also LoRA/fine-tune the text encoder
    attention_loss_weight: float = 0.01
    masked_loss: bool = True
    union_sampling: bool = True
    flip: bool = True
    resolution: int = 512
    batch_size: int = 1
    seed: int = 0
    prior_preservation: bool = False
    class_prompt: str = "a photo of an object"
    num_class_images: int = 20
    prior_loss_weight: float = 1.0
    class_inference_steps: int = 30
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"        # "auto" (bf16/fp16 on CUDA, fp32 on CPU) | "no" | "bf16" | "fp16"
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    tokens: list[str] | None = None      # default "<asset0>", "<asset1>", ...
    attention_downscale: int = 4         # maps from the layers at 1/4 of the latent resolution

    @property
    def denoiser_lr(self) -> float:
        if self.phase2_lr is not None:
            return self.phase2_lr
        return 1e-4 if self.mode == "lora" else 2e-6

    def validate(self, num_concepts: int) -> None:
        """InputError naming the setting that is out of range."""
        if self.mode not in ("lora", "full"):
            raise InputError(f"mode must be 'lora' or 'full', got {self.mode!r}")
        for name in ("phase1_steps", "phase2_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("batch_size", "lora_rank", "resolution", "attention_downscale"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("phase1_lr", "phase2_handle_lr", "attention_loss_weight", "prior_loss_weight"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise InputError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.tokens is not None:
            if len(self.tokens) != num_concepts:
                raise InputError(f"tokens: {len(self.tokens)} handle tokens for {num_concepts} concepts")
            for token in self.tokens:
                if not token or any(c.isspace() for c in token) or token != token.lower():
                    raise InputError(f"tokens: handle {token!r} must be one lowercase word without spaces")
        if self.prior_preservation and self.num_class_images < 1:
            raise InputError("num_class_images must be at least 1 with prior preservation")

    def to_dict(self) -> dict:
        return asdict(self)


# Keys of TrainConfig that change the trained result (all but pure speed settings).
RESULT_SETTINGS = tuple(f for f in TrainConfig.__dataclass_fields__
                        if f not in ("gradient_checkpointing",))
