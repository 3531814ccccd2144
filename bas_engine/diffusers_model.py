"""The method's model adapter for diffusers + transformers modules (``SDComponents``): the CLI's and the Python API's.

Handles are swapped-in embedding modules (``handles.py``), the attention maps come from attention processors
(``diffusers_attention.py``), phase 2 wraps the attention projections in LoRA modules (``lora.py``) or trains the
weights themselves, and noise follows the components' DDPM training scheduler. Everything is undone on release.

Dtypes: modules that move to the training device for the run go there as copies, the frozen ones in the compute
dtype (bf16 on CUDA; the VAE, used once, in its own), what full mode trains in fp32; afterwards every module gets its own tensors back (the
originals were never touched: exact, and no second copy is kept). Modules already on the device stay in their
dtype, except that what full mode trains is brought to fp32 and back (exact: every bf16 / fp16 value is an fp32
value).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from .components import SDComponents, canonical_text_encoder_name
from .conditioning import TextConditioning, time_ids
from .diffusers_attention import AttentionCapture
from .latents import CachedPosterior
from .lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, inject_lora, lora_state_dict, remove_lora
from .memory import HEADROOM, activation_bytes, plan_checkpointing, weight_bytes
from .model_adapter import AttentionHooks, ModelAdapter, PromptBatch, SizeCondition, TextHandles


class DiffusersText(TextHandles):
    """``TextConditioning`` (the handles in every encoder, the UNet's text inputs) behind the adapter interface."""

    def __init__(self, text: TextConditioning):
        self.text = text

    @property
    def vectors(self) -> list[torch.nn.Parameter]:
        return self.text.vectors

    def handle_vectors(self) -> dict[str, torch.Tensor]:
        return self.text.handle_vectors()

    def tokenize(self, prompts: list[str], device: torch.device) -> PromptBatch:
        ids = self.text.tokenize(prompts, device)
        return PromptBatch(self.text.positions(ids), ids)

    def encode(self, batch: PromptBatch, sizes: Sequence[SizeCondition]):
        size_ids = None
        if self.text.family.pooled_encoder is not None:
            size_ids = torch.cat([time_ids(s.original, s.crop_top_left, s.target, s.count) for s in sizes])
        return self.text.encode(batch.tokens, size_ids)


class DiffusersModel(ModelAdapter):
    """``SDComponents`` as the training loop takes them."""

    #: full mode keeps a CPU copy of the base weights, to take deltas and to restore the model afterwards
    keep_base_weights = True

    def __init__(self, components: SDComponents):
        super().__init__()
        self.c = components
        self.family = components.spec
        self.prediction_type = components.prediction_type
        self.vae_scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
        self.latent_multiple = 2 ** (len(components.unet.down_blocks) - 1)
        self.num_train_timesteps = components.noise_scheduler.config.num_train_timesteps
        self.autocast_dtype: torch.dtype | None = None

    @property
    def encoder_name(self) -> str:
        return self.c.encoder_name

    def fingerprint(self) -> str:
        return self.c.fingerprint()

    # -- life cycle ----------------------------------------------------------------------------------------------
    def prepare(self, device: torch.device, compute_dtype: torch.dtype | None, config, image_size: tuple[int, int]
                ) -> bool:
        c = self.c
        self.device, self.autocast_dtype = device, compute_dtype
        bytes_per_element = 2 if compute_dtype else 4
        widths, blocks = list(c.unet.config.block_out_channels), c.unet.config.layers_per_block
        blocks = blocks if isinstance(blocks, int) else max(blocks)

        def needed(height: int, width: int, checkpointing: bool) -> int:
            latent_pixels = (height // self.vae_scale) * (width // self.vae_scale)
            activations = activation_bytes(widths, blocks, latent_pixels, config.batch_size, checkpointing,
                                           bytes_per_element)
            return int((weight_bytes(list(c.modules()), device) + activations) * HEADROOM)

        checkpointing = plan_checkpointing(needed, image_size, config.gradient_checkpointing, device)
        trained = list(self._trained_modules(config).values()) if config.mode == "full" else []
        for module in c.modules():
            self.on_release(_restore_module_state(module))
            module.requires_grad_(False)
            is_trained = any(module is m for m in trained)
            # the VAE encodes the scene once and keeps its dtype (SDXL's VAE overflows in fp16)
            dtype = torch.float32 if is_trained else None if module is c.vae else compute_dtype
            if not _on(module, device):
                self.on_release(_keep_tensors(module))      # the run works on device copies; these come back
                module.to(device=device, dtype=dtype)
            elif is_trained and module.dtype != torch.float32:
                module.to(torch.float32)                    # trainable weights in fp32; back to their dtype after
        c.unet.train()
        return checkpointing

    def enable_gradient_checkpointing(self) -> None:
        unet = self.c.unet
        if not unet.is_gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            self.on_release(unet.disable_gradient_checkpointing)

    # -- the scene ------------------------------------------------------------------------------------------------
    def encode_pixels(self, pixels: torch.Tensor) -> CachedPosterior:
        return CachedPosterior.encode(self.c.vae, pixels)

    def latents_in(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.c.vae.config.scaling_factor

    # -- text and attention -------------------------------------------------------------------------------------------
    def text_handles(self, tokens: Sequence[str], initializers: Sequence[str | None]) -> DiffusersText:
        text = TextConditioning(self.c, tokens, initializers)
        text.attach()
        self.on_release(text.detach)
        return DiffusersText(text)

    def attention_hooks(self, downscale: int) -> AttentionHooks:
        capture = AttentionCapture(self.c.unet, downscale, self.family.attention_blocks)
        capture.install()
        self.on_release(capture.remove)
        return capture

    # -- one forward pass ---------------------------------------------------------------------------------------------
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = self.c.noise_scheduler
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = noise if self.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        return noisy, target

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning) -> torch.Tensor:
        context, added = conditioning
        return self.c.unet(noisy, timesteps, context, added_cond_kwargs=added).sample

    def forward_context(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- phase 2 ------------------------------------------------------------------------------------------------------
    def _trained_modules(self, config) -> dict[str, torch.nn.Module]:
        """What phase 2 trains besides the handles, by pack prefix: the UNet, and with train_text_encoder the text
        encoders ("text_encoder", "text_encoder_2", as diffusers names them)."""
        modules = {"unet": self.c.unet}
        if config.train_text_encoder:
            modules.update({("text_encoder" if i == 0 else f"text_encoder_{i + 1}"): encoder
                            for i, (_, _, encoder) in enumerate(self.c.text_encoders())})
        return modules

    def phase2_parameters(self, config, generator: torch.Generator) -> list[torch.nn.Parameter]:
        self.mode = config.mode
        modules = self._trained_modules(config)
        if config.mode == "lora":
            alpha = config.lora_alpha or config.lora_rank
            self.lora = {}       # pack prefix ("unet", "text_encoder", "text_encoder_2") -> adapters
            for prefix, module in modules.items():
                targets = UNET_TARGETS if prefix == "unet" else TEXT_ENCODER_TARGETS
                adapters = inject_lora(module, targets, config.lora_rank, alpha, generator)
                self.lora[prefix] = adapters
                self.on_release(lambda module=module, adapters=adapters: remove_lora(module, adapters))
            return [p for adapters in self.lora.values() for a in adapters.values() for p in (a.down, a.up)]
        # The token embeddings are not the model's to train: the handles live beside them.
        self.full_params = {f"{prefix}.{name}": p for prefix, module in modules.items()
                            for name, p in module.named_parameters() if "token_embedding" not in name}
        if self.keep_base_weights:
            # Kept on the CPU: deltas are taken from them and they are put back afterwards.
            self.base_weights = {k: p.detach().to("cpu", copy=True) for k, p in self.full_params.items()}
            self.on_release(self._restore_full_weights)
        return list(self.full_params.values())

    @torch.no_grad()
    def _restore_full_weights(self) -> None:
        for key, p in self.full_params.items():
            p.copy_(self.base_weights[key].to(p.device))
            p.requires_grad_(False)

    def phase2_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        lora, deltas = {}, {}
        if self.mode == "lora":
            for prefix, adapters in self.lora.items():
                if prefix != "unet":
                    adapters = {canonical_text_encoder_name(k): v for k, v in adapters.items()}
                lora.update(lora_state_dict(adapters, prefix))
            return lora, deltas
        with torch.no_grad():
            for key, p in self.full_params.items():
                delta = p.detach().cpu() - self.base_weights[key]
                if torch.count_nonzero(delta):
                    model, _, name = key.partition(".")
                    if model.startswith("text_encoder"):
                        key = f"{model}.{canonical_text_encoder_name(name)}"
                    deltas[key] = delta.contiguous()
        return lora, deltas

    def class_images(self, prompt: str, count: int, size: tuple[int, int], steps: int, cache_dir: str,
                     seed: int) -> list[torch.Tensor]:
        from .prior import class_images

        return class_images(self.c, prompt, count, size, steps, cache_dir, seed)


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether the module's weights are on ``device`` ("cuda" and "cuda:0" are the same while 0 is current)."""
    first = next(module.parameters(), None)
    if first is None:
        return True
    here = first.device
    if here.type != device.type:
        return False
    if here.type == "cuda" and (here.index is None) != (device.index is None):
        return (here.index or torch.cuda.current_device()) == (device.index or torch.cuda.current_device())
    return here.index == device.index


def _keep_tensors(module: torch.nn.Module):
    """A function that gives the module back its current parameters and buffers (after ``module.to`` has put copies
    in their place for the run: new tensors in the same Parameter objects, or new Parameters)."""
    kept = [(owner._parameters, name, tensor, tensor.data) for owner in module.modules()
            for name, tensor in owner._parameters.items() if tensor is not None]
    kept += [(owner._buffers, name, tensor, None) for owner in module.modules()
             for name, tensor in owner._buffers.items() if tensor is not None]

    def restore() -> None:
        for table, name, tensor, data in kept:
            if data is not None:
                tensor.data = data
            table[name] = tensor
    return restore


def _restore_module_state(module: torch.nn.Module):
    """A function that puts back the module's training flag, dtype and each parameter's requires_grad."""
    training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]
    first = next(module.parameters(), None)
    dtype = first.dtype if first is not None else None

    def restore() -> None:
        if first is not None and first.dtype != dtype:
            module.to(dtype)
        module.train(training)
        for p, flag in flags:
            p.requires_grad_(flag)
    return restore
