"""What the method needs from a model: the one interface its training loop (``trainer.py``) is written against.

Two adapters implement it: ``diffusers_model.DiffusersModel`` (diffusers + transformers modules: the CLI and the
Python API) and the node pack's adapter of ComfyUI's own loaded MODEL / CLIP / VAE (trained in place through
ComfyUI's patching). The loop never asks which one it has; everything model-specific is a method here.

This module is plain torch: it imports neither diffusers nor ComfyUI.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .attention import AttentionStore
from .families import Family


@dataclass(frozen=True)
class SizeCondition:
    """SDXL-style size micro-conditioning of ``count`` consecutive examples of a batch (pixels, (height, width))."""

    original: tuple[int, int]
    crop_top_left: tuple[int, int]
    target: tuple[int, int]
    count: int


@dataclass
class PromptBatch:
    """Tokenized prompts as one adapter's text encoders take them, and where the handles sit in them.

    ``positions`` (B, N): each handle's token position in each prompt, -1 where it is absent; the attention maps
    are read from these columns. ``tokens``: the adapter's own form (ids per encoder, token lists, ...).
    """

    positions: torch.Tensor
    tokens: Any


class TextHandles(ABC):
    """The run's handles in every text encoder of the model: one trainable vector per handle per encoder, the
    encoders' own embedding rows untouched, and the denoiser's text conditioning built with them."""

    @property
    @abstractmethod
    def vectors(self) -> list[nn.Parameter]:
        """The trainable handle vectors, one (N, width) float32 tensor per encoder."""

    @abstractmethod
    def handle_vectors(self) -> dict[str, torch.Tensor]:
        """{encoder name: (N, width)} CPU float copies, as packs store them."""

    @abstractmethod
    def tokenize(self, prompts: list[str], device: torch.device) -> PromptBatch:
        """The prompts ("a photo of <asset1> and <asset0>") tokenized for every encoder."""

    @abstractmethod
    def encode(self, batch: PromptBatch, sizes: Sequence[SizeCondition]) -> Any:
        """The denoiser's text conditioning (differentiable in the handle vectors), as ``predict`` takes it."""


class AttentionHooks(ABC):
    """Records, in ``store``, the handle columns of the cross-attention layers chosen for the attention loss."""

    store: AttentionStore
    #: the chosen layers' resolution: 1/downscale of the latent side
    downscale: int

    @abstractmethod
    def install(self) -> None:
        """Put the recording hooks on the chosen layers (until ``remove``)."""

    @abstractmethod
    def remove(self) -> None:
        """Take the hooks off; the model attends as before."""


def compute_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The dtype the frozen model computes in for ``TrainConfig.mixed_precision``; None: fp32."""
    if setting == "no" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class ModelAdapter(ABC):
    """One model as the method trains it. Whatever an adapter attaches for a run (handles, hooks, adapters, moved
    or re-cast weights) it undoes in ``release()``, which the loop calls however the run ends."""

    #: the model family's table entry
    family: Family
    #: "epsilon" | "v_prediction" (what the denoiser predicts; the loss is taken in that space)
    prediction_type: str
    #: pixels per latent pixel (the VAE's downscale)
    vae_scale: int
    #: a latent side must be a multiple of this to pass every downsampling of the denoiser
    latent_multiple: int
    #: the number of discrete training timesteps the loop draws from
    num_train_timesteps: int = 1000
    #: the denoiser reads the latent in patches of this side (a DiT: Flux 2); the loss mask is pooled to them
    patch_size: int = 1

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    # -- life cycle ----------------------------------------------------------------------------------------------
    def on_release(self, undo: Callable[[], None]) -> None:
        """Register what ``release`` must undo (last registered, first undone)."""
        self._undo.append(undo)

    def release(self) -> None:
        """Undo everything attached for the run, even when a step of the undo fails (the first error is raised)."""
        error = None
        while self._undo:
            try:
                self._undo.pop()()
            except BaseException as exc:  # noqa: BLE001 - keep undoing, report the first failure
                error = error or exc
        if error is not None:
            raise error

    @abstractmethod
    def fingerprint(self) -> str:
        """The base denoiser weights' fingerprint (``fingerprint.model_fingerprint``), before anything is attached."""

    @property
    def encoder_name(self) -> str:
        return self.family.text_encoders[0].name

    def compute_dtype(self, setting: str, device: torch.device) -> torch.dtype | None:
        """The run's compute dtype for ``TrainConfig.mixed_precision`` (``compute_dtype``; an adapter may prefer the
        dtype its weights are kept in)."""
        return compute_dtype(setting, device)

    @abstractmethod
    def prepare(self, device: torch.device, compute_dtype: torch.dtype | None, config, image_size: tuple[int, int]
                ) -> bool:
        """Freeze the model and put it where the run computes, after checking the run fits (an ``InputError`` on
        ``resolution`` when it cannot). Returns whether to use gradient checkpointing (the setting, or the memory
        estimate when it is "auto")."""

    # -- the scene ------------------------------------------------------------------------------------------------
    @abstractmethod
    def encode_pixels(self, pixels: torch.Tensor):
        """The VAE posterior (``latents.CachedPosterior``, raw latent space) of (B, 3, H, W) pixels in [-1, 1]."""

    @abstractmethod
    def latents_in(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents as the denoiser takes them (the family's scaling)."""

    # -- text and attention -------------------------------------------------------------------------------------------
    @abstractmethod
    def text_handles(self, tokens: Sequence[str], initializers: Sequence[str | None]) -> TextHandles:
        """Add the handles (rows initialised from the initializer words) to every text encoder, for the run."""

    @abstractmethod
    def attention_hooks(self, downscale: int) -> AttentionHooks:
        """Hooks on the cross-attention layers at 1/downscale of the latent side in the family's blocks (installed
        for the run)."""

    # -- one forward pass ---------------------------------------------------------------------------------------------
    @abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the noisy input at ``timesteps``, the target of the denoiser's prediction) by the model's own schedule."""

    @abstractmethod
    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Any) -> torch.Tensor:
        """The denoiser's prediction, in the space of ``add_noise``'s target."""

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Entered around text encoding and prediction (e.g. autocast)."""
        return contextlib.nullcontext()

    # -- phase 2 ------------------------------------------------------------------------------------------------------
    @abstractmethod
    def phase2_parameters(self, config, generator: torch.Generator) -> list[nn.Parameter]:
        """Attach what phase 2 trains besides the handles (LoRA adapters or the full weights) and return it."""

    @abstractmethod
    def phase2_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(LoRA, deltas) of phase 2 in the pack's format (``pack.ConceptPack``: diffusers module names)."""

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the denoiser's activations in backward (for the run)."""
        raise NotImplementedError(f"{type(self).__name__} has no gradient checkpointing")

    def class_images(self, prompt: str, count: int, size: tuple[int, int], steps: int, cache_dir: str,
                     seed: int) -> list[torch.Tensor]:
        """Prior preservation's class images of the base model, (3, H, W) in [0, 1]."""
        from .errors import InputError

        raise InputError(f"prior_preservation: not available for {type(self).__name__}", field="prior_preservation")
