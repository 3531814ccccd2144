"""The method's model adapter for ComfyUI's own loaded MODEL, CLIP and VAE: trained in place, never copied.

The training loop is the engine's (``bas_engine.trainer``); this adapter gives it ComfyUI's model:

* the MODEL and CLIP are ``clone()``d (a clone shares the weights and has its own patches and options), so the
  ones that flowed in never change for the rest of the graph;
* the frozen weights stay where and as ComfyUI keeps them; the compute dtype is set on the clone
  (``set_model_compute_dtype``), and ``comfy.model_management.load_models_gpu`` puts both clones on the device with
  the run's estimated memory as ``memory_required``, so ComfyUI offloads other models to make room;
* noise, timesteps, the model's input scaling and what its output means come from its own ``model_sampling``
  (epsilon, v-prediction, ...); prediction goes through ``BaseModel.apply_model`` (SDXL's ADM vector from its own
  ``encode_adm``); the loss is taken in the space of the denoiser's raw output, as the diffusers path takes it;
* handles (``text.py``), attention maps (``attention.py``) and phase 2's weights (``weights.py``) are ComfyUI's
  own mechanisms: embeddings in token lists, attn2 replace patches, weight wrappers.

``release()`` unloads the clones (their patched state leaves the device), takes the wrappers off ComfyUI's layers
and puts back what it changed on shared objects (CLIP layer options, checkpointed forwards).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from ...bas_engine.errors import InputError
from ...bas_engine.families import get_family
from ...bas_engine.latents import CachedPosterior
from ...bas_engine.memory import plan_checkpointing
from ...bas_engine.model_adapter import ModelAdapter
from ..common import unet_fingerprint
from .flux import FluxParts
from .text import ComfyText
from .unet import UNetParts
from .weights import TEXT_ENCODER_TARGETS, TrainableWeights

#: the denoiser parts of each architecture of the family table (``Family.denoiser``)
DENOISER_PARTS = {"unet": UNetParts, "flux": FluxParts}

log = logging.getLogger("break_a_scene")


def _leave_inference_tensors(module: torch.nn.Module) -> None:
    """Give the module ordinary tensors with the same values where it holds inference tensors.

    ComfyUI runs its nodes under ``torch.inference_mode()``, so a checkpoint loaded by a node (Load Checkpoint in a
    graph) has inference tensors for weights, which autograd refuses to save for the backward pass. One tensor at a
    time is copied (outside inference mode) and put in its place, the way ComfyUI's own patching swaps parameters
    (``comfy.utils.set_attr_param``); the values do not change, and ComfyUI samples with ordinary tensors as well.
    """
    for owner in module.modules():
        for name, tensor in list(owner._parameters.items()):
            if tensor is not None and tensor.is_inference():
                owner._parameters[name] = torch.nn.Parameter(tensor.clone(), requires_grad=False)
        for name, tensor in list(owner._buffers.items()):
            if tensor is not None and tensor.is_inference():
                owner._buffers[name] = tensor.clone()


def _restore_requires_grad(flags) -> None:
    for p, flag in flags:
        if p.requires_grad != flag:
            with torch.inference_mode(p.is_inference()):     # an inference tensor takes the flag only in there
                p.requires_grad_(flag)


class ComfyModel(ModelAdapter):
    """ComfyUI's MODEL + CLIP + VAE of one checkpoint as the training loop takes them (``family``: the family key
    the node read off the MODEL; ``prediction_type`` likewise)."""

    def __init__(self, model, clip, vae, family: str, prediction_type: str):
        super().__init__()
        import comfy.model_management as mm

        self.mm = mm
        self.source_model = model
        self.unet = model.clone()
        self.clip = clip.clone()
        self.vae = vae
        self.family = get_family(family)
        self.prediction_type = prediction_type
        self.parts = DENOISER_PARTS[self.family.denoiser](self.unet)
        self.vae_scale = int(vae.downscale_ratio)
        self.latent_multiple = self.parts.latent_multiple
        self.patch_size = self.parts.patch_size
        self.model_sampling = self.unet.get_model_object("model_sampling")
        self.num_train_timesteps = int(self.model_sampling.sigmas.shape[0])
        self.device = mm.get_torch_device()
        self.weights = TrainableWeights()
        self._checkpointed: list[torch.nn.Module] = []
        if model.patches:
            log.warning("Break-A-Scene Trainer: the MODEL carries weight patches (e.g. a LoRA); the handles and phase "
                        "2 are trained on top of them, so use the pack with the same patches")

    def fingerprint(self) -> str:
        return unet_fingerprint(self.source_model)

    # -- life cycle ----------------------------------------------------------------------------------------------
    def compute_dtype(self, setting: str, device: torch.device) -> torch.dtype | None:
        """"auto" on CUDA computes in the half precision ComfyUI keeps the weights in (fp16 or bf16): another dtype
        would cast every layer's weights per step, and the casts would stay alive for the backward pass (a second
        copy of the model). fp16 runs with loss scaling."""
        model = self.unet.model
        kept = model.manual_cast_dtype or model.get_dtype()
        if setting == "auto" and device.type == "cuda" and kept in (torch.float16, torch.bfloat16):
            return kept
        return super().compute_dtype(setting, device)

    def prepare(self, device: torch.device, compute_dtype: torch.dtype | None, config, image_size: tuple[int, int]
                ) -> bool:
        if config.mode == "full" and not self.family.full_finetune:
            raise InputError(f"mode: a full fine-tune of {self.family.label} is not practical (its weights, gradients "
                             "and optimizer state need several times a GPU's memory); use mode lora", field="mode")
        self.device = device
        self.on_release(self._unload)
        model = self.unet.model
        dtype = compute_dtype or torch.float32
        current = model.manual_cast_dtype or model.get_dtype()
        if current != dtype:
            self.unet.set_model_compute_dtype(dtype)
        self.compute_dtype = dtype
        # the CLIP computes as it would for a prompt (ComfyUI's CLIPSetLastLayer option included)
        stage = self.clip.cond_stage_model
        stage.reset_clip_options()
        if self.clip.layer_idx is not None:
            stage.set_clip_options({"layer": self.clip.layer_idx})
        self.on_release(stage.reset_clip_options)

        element = torch.finfo(dtype).bits // 8
        phase2 = TrainableWeights.phase2_bytes(self.parts.trainable_layers(), self.parts.lora_targets, config.mode,
                                               config.lora_rank, self.parts.checkpoint_modules(), element)

        def needed(height: int, width: int, checkpointing: bool) -> int:
            latent = (height // self.vae_scale, width // self.vae_scale)
            return self.parts.activation_bytes(latent, config.batch_size, checkpointing, element) + phase2[checkpointing]

        checkpointing = plan_checkpointing(needed, image_size, config.gradient_checkpointing, device,
                                           free_bytes=self._free_bytes_for_training(device))
        self.memory_required = needed(*image_size, checkpointing)
        self.load()
        # ComfyUI leaves its UNet's weights requiring grad (it samples under inference mode); frozen for the run, or
        # backward would fill a gradient for every weight: a second full-size copy
        for module in (model, self.clip.cond_stage_model):
            flags = [(p, p.requires_grad) for p in module.parameters()]
            module.requires_grad_(False)
            self.on_release(lambda flags=flags: _restore_requires_grad(flags))
        guards = self.parts.guard_in_place()
        self.on_release(lambda: [guard.remove() for guard in guards])
        self.config = config
        return checkpointing

    def _free_bytes_for_training(self, device: torch.device) -> int | None:
        """On CUDA: what is left once both models are on the device and ComfyUI has offloaded every other model."""
        if device.type != "cuda":
            return None
        mm = self.mm
        ours = (self.unet, self.clip.patcher)
        # models ComfyUI may offload: every loaded one but those sharing our weights (clones of the MODEL / CLIP)
        others = sum(loaded.model_loaded_memory() for loaded in mm.current_loaded_models
                     if loaded.device == device and loaded.model is not None
                     and not any(loaded.model.is_clone(patcher) for patcher in ours))
        missing = sum(patcher.model_size() - patcher.loaded_size() for patcher in ours)
        return mm.get_free_memory(device) + others - missing

    def load(self) -> None:
        """Put both clones (their current patches and wrappers) on the device, fully; ComfyUI frees room first."""
        self.mm.load_models_gpu([self.unet, self.clip.patcher], memory_required=self.memory_required,
                                force_full_load=True)
        for module in (self.unet.model, self.clip.cond_stage_model):
            _leave_inference_tensors(module)

    def _unload(self) -> None:
        """Take the clones off ComfyUI's list of loaded models and unpatch them; drop the wrappers from the layers."""
        mm = self.mm
        ours = (self.unet, self.clip.patcher)
        for index in reversed(range(len(mm.current_loaded_models))):
            loaded = mm.current_loaded_models[index]
            if any(loaded.model is patcher for patcher in ours):
                mm.current_loaded_models.pop(index).model_unload()
        self.weights.remove()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in backward (ComfyUI's trainer does the same: the denoiser's blocks,
        for the UNet every highest layer that is not a container, run under ``torch.utils.checkpoint``)."""
        def wrap(module: torch.nn.Module) -> None:
            forward = module.forward

            def run(args, kwargs):
                # a block that adds into its input in place must not change what the recomputation starts from
                args = tuple(a.clone() if torch.is_tensor(a) else a for a in args)
                kwargs = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
                return forward(*args, **kwargs)

            def checkpointed(*args, **kwargs):
                return torch.utils.checkpoint.checkpoint(run, args, kwargs, use_reentrant=False)
            module.forward = checkpointed
            self._checkpointed.append(module)

        for module in self.parts.checkpoint_modules():
            wrap(module)
        self.on_release(self._restore_forwards)

    def _restore_forwards(self) -> None:
        for module in self._checkpointed:
            module.__dict__.pop("forward", None)
        self._checkpointed.clear()

    # -- the scene ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> CachedPosterior:
        """The VAE posterior's mean and std (not ``VAE.encode``, which returns the mean only): the method samples a
        new latent from it every step, as the paper's code does."""
        from comfy.ldm.models.autoencoder import DiagonalGaussianRegularizer
        from comfy.ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        vae, mm = self.vae, self.mm
        mm.load_models_gpu([vae.patcher], memory_required=vae.memory_used_encode(pixels.shape, vae.vae_dtype))
        stage = vae.first_stage_model
        x = pixels.to(vae.device, vae.vae_dtype)
        if not isinstance(getattr(stage, "regularization", None), DiagonalGaussianRegularizer):
            mean = stage.encode(x).float()
            return CachedPosterior(mean.to(self.device), torch.zeros_like(mean).to(self.device))
        moments = stage.encoder(x)
        if hasattr(stage, "quant_conv"):
            moments = stage.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments.float())
        return CachedPosterior(posterior.mean.to(self.device), posterior.std.to(self.device))

    def latents_in(self, latents: torch.Tensor) -> torch.Tensor:
        return self.unet.model.process_latent_in(latents)

    # -- text and attention -------------------------------------------------------------------------------------------
    def text_handles(self, tokens: Sequence[str], initializers: Sequence[str | None]) -> ComfyText:
        # the vectors live where ComfyUI put the text encoders (prepare loaded them)
        text = ComfyText(self.clip, self.family, tokens, initializers, self.clip.patcher.current_loaded_device())
        self.on_release(text.remove_hooks)
        return text

    def attention_hooks(self, downscale: int):
        hooks = self.parts.attention_hooks(downscale, self.family.attention_blocks)
        hooks.install()
        self.on_release(hooks.remove)
        return hooks

    # -- one forward pass ---------------------------------------------------------------------------------------------
    def _sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.model_sampling.sigmas.to(timesteps.device)[timesteps].float()

    def _output_space(self, sigma: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(skip, scale) with denoised = skip + scale * raw output (``calculate_denoised`` is affine in the output)."""
        ms = self.model_sampling
        skip = ms.calculate_denoised(sigma, torch.zeros_like(x), x)
        return skip, ms.calculate_denoised(sigma, torch.ones_like(x), x) - skip

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self._sigmas(timesteps)
        noisy = self.model_sampling.noise_scaling(sigma, noise, latents)
        skip, scale = self._output_space(sigma, noisy)
        return noisy, (latents - skip) / scale           # epsilon: the noise; v-prediction: v

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning) -> torch.Tensor:
        context, pooled, sizes = conditioning
        sigma = self._sigmas(timesteps)
        extra = self.parts.extra_inputs(noisy.shape[0], self.config, noisy.device)
        adm = self._adm(pooled, sizes)
        if adm is not None:
            extra["y"] = adm
        options = dict(self.unet.model_options.get("transformer_options", {}))
        options["sigmas"] = sigma
        base = self.unet.model
        wrapper = self.unet.model_options.get("model_function_wrapper")
        if wrapper is not None:      # a node's wrapper around apply_model, called as ComfyUI's sampler calls it
            denoised = wrapper(base.apply_model, {"input": noisy, "timestep": sigma, "cond_or_uncond": [0] * len(sigma),
                                                  "c": {"c_crossattn": context, "transformer_options": options, **extra}})
        else:
            denoised = base.apply_model(noisy, sigma, c_crossattn=context, transformer_options=options, **extra)
        skip, scale = self._output_space(sigma, noisy)
        return (denoised.float() - skip) / scale

    def _adm(self, pooled: torch.Tensor | None, sizes) -> torch.Tensor | None:
        """The model's extra vector (SDXL: pooled text + size embeddings) from its own ``encode_adm``."""
        if self.family.pooled_encoder is None or pooled is None:
            return None
        rows, parts = 0, []
        for size in sizes:
            (height, width), (top, left), (target_h, target_w) = size.original, size.crop_top_left, size.target
            parts.append(self.unet.model.encode_adm(pooled_output=pooled[rows:rows + size.count], width=width,
                                                    height=height, crop_w=left, crop_h=top, target_width=target_w,
                                                    target_height=target_h))
            rows += size.count
        return torch.cat(parts)

    # -- phase 2 ------------------------------------------------------------------------------------------------------
    def phase2_parameters(self, config, generator: torch.Generator) -> list[torch.nn.Parameter]:
        weights = self.weights
        unet_layers = self.parts.trainable_layers()
        encoders = enumerate(self.family.text_encoders) if config.train_text_encoder else ()
        text = [(("text_encoder" if i == 0 else f"text_encoder_{i + 1}"), weights.text_layers(self.clip, spec))
                for i, spec in encoders if spec.trainable]
        if config.mode == "lora":
            alpha = config.lora_alpha or config.lora_rank
            weights.add_lora(self.unet, "unet", unet_layers, self.parts.lora_targets, config.lora_rank, alpha,
                             generator)
            for prefix, layers in text:
                weights.add_lora(self.clip.patcher, prefix, layers, TEXT_ENCODER_TARGETS, config.lora_rank, alpha,
                                 generator)
        else:
            weights.add_deltas(self.unet, "unet", unet_layers)
            for prefix, layers in text:
                weights.add_deltas(self.clip.patcher, prefix, layers)
        self.load()           # the wrappers join the layers when ComfyUI (re)loads the clones
        return weights.parameters()

    def phase2_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.weights.state()

    def class_images(self, prompt: str, count: int, size: tuple[int, int], steps: int, cache_dir: str,
                     seed: int) -> list[torch.Tensor]:
        raise InputError("prior_preservation: not available in ComfyUI's trainer node (use `bas extract`)",
                         field="prior_preservation")
