"""The two-phase Break-A-Scene training loop.

Phase 1 trains only the handle embeddings (model frozen); phase 2 trains the handles and the denoiser
(LoRA or full). Each step: union sampling of concepts with a joint flip, masked diffusion loss, and
the cross-attention loss on the layers at 1/4 of the latent resolution; optionally prior preservation.
"""
from __future__ import annotations

import contextlib
import os
from collections import deque

import torch
import torch.nn.functional as F

from .attention import AttentionCapture
from .callbacks import PreviewEvent, ProgressEvent, TrainCallbacks
from .components import SDComponents, canonical_text_encoder_name
from .conditioning import TextConditioning, time_ids
from .config import TrainConfig
from .handles import default_tokens
from .latents import CachedPosterior, SceneTensors, training_size
from .lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, inject_lora, lora_state_dict, remove_lora
from .losses import attention_loss, masked_diffusion_loss
from .memory import check_fits
from .pack import ConceptPack
from .sampling import ConceptSampler
from .scene import Scene

LOSS_WINDOW = 20  # the pack's "final losses" are the mean over the last steps of each phase


def train(components: SDComponents, scene: Scene, config: TrainConfig | None = None,
          callbacks: TrainCallbacks | None = None, device: str | torch.device | None = None,
          cache_dir: str | None = None) -> ConceptPack:
    """Run both phases on `scene` and return the concept pack.

    The components are left as they were: handles, LoRA adapters and attention processors are
    attached only for the run, and full-mode weights are restored after their deltas are taken.
    """
    config = config or TrainConfig()
    config.validate(scene.num_concepts)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = TrainingRun(components, scene, config, device, cache_dir)
    with run:
        return run.train(callbacks or TrainCallbacks())


class TrainingRun:
    """State of one run: handles, adapters, capture, cached scene; a context manager that cleans up."""

    #: full mode keeps a CPU copy of the base weights, to take deltas and to restore the model afterwards
    keep_base_weights = True

    def __init__(self, components: SDComponents, scene: Scene, config: TrainConfig, device: torch.device,
                 cache_dir: str | None = None):
        self.c, self.scene, self.config, self.device = components, scene, config, device
        self.cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "break_a_scene")
        self.tokens = config.tokens or default_tokens(scene.num_concepts)
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.sampler = ConceptSampler(self.tokens, config.seed, config.union_sampling, config.flip)
        self.autocast_dtype = _autocast_dtype(config.mixed_precision, device)
        # fp16 autocast needs loss scaling; for bf16/fp32 the scaler is a pass-through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        self.losses: dict[str, deque] = {}
        self.record_maps = False  # capture attention maps this step although the attention loss is off
        self._undo: list = []

    # -- setup and teardown -------------------------------------------------------------------------
    def __enter__(self) -> "TrainingRun":
        c, config = self.c, self.config
        self.base_fingerprint = c.fingerprint()  # before anything is attached to the modules
        vae_scale = 2 ** (len(c.vae.config.block_out_channels) - 1)
        # A size that cannot fit is an error before anything is allocated (CUDA: against its free memory).
        size = training_size(*self.scene.image.shape[-2:], config.resolution, vae_scale)
        check_fits(c.unet, list(c.modules()), size, vae_scale, config.batch_size, config.gradient_checkpointing,
                   2 if self.autocast_dtype else 4, self.device)
        for module in c.modules():
            self._undo.append(_restore_module_state(module))
            module.requires_grad_(False)
            module.to(self.device)
        initializers = [init or (name if name != f"asset{i}" else None)
                        for i, (name, init) in enumerate(zip(self.scene.names, self.scene.initializers))]
        # the handles in every text encoder of the family, and how the UNet's text inputs are built
        self.text = TextConditioning(c, self.tokens, initializers)
        self.text.attach()
        self._undo.append(self.text.detach)
        self.capture = AttentionCapture(c.unet, config.attention_downscale, c.spec.attention_blocks)
        self.capture.install()
        self._undo.append(self.capture.remove)
        # Latent sides must pass every UNet downsampling and give whole attention-map pixels.
        latent_multiple = max(2 ** (len(c.unet.down_blocks) - 1), self.capture.downscale)
        self.scene_t = SceneTensors(self.scene, c.vae, config.resolution, vae_scale * latent_multiple, vae_scale,
                                    self.capture.downscale, self.device)
        self.class_posteriors = self._prepare_prior() if config.prior_preservation else None
        if (config.gradient_checkpointing or c.spec.gradient_checkpointing) and not c.unet.is_gradient_checkpointing:
            c.unet.enable_gradient_checkpointing()
            self._undo.append(c.unet.disable_gradient_checkpointing)
        c.unet.train()
        return self

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _prepare_prior(self) -> CachedPosterior:
        from .prior import class_images

        config = self.config
        images = class_images(self.c, config.class_prompt, config.num_class_images, self.scene_t.size,
                              config.class_inference_steps, self.cache_dir, config.seed)
        pixels = torch.stack(images).to(self.device) * 2 - 1
        return CachedPosterior.encode(self.c.vae, pixels)

    # -- the two phases -----------------------------------------------------------------------------
    def train(self, callbacks: TrainCallbacks) -> ConceptPack:
        config = self.config
        total = config.phase1_steps + config.phase2_steps
        done = 0
        for phase, steps in ((1, config.phase1_steps), (2, config.phase2_steps)):
            if steps == 0:
                continue
            optimizer = self.start_phase(phase)
            for step in range(1, steps + 1):
                callbacks.check_cancel()
                draws = self.sampler.draw_batch(config.batch_size)
                previewing = callbacks.on_preview is not None and (step % callbacks.preview_every == 0 or step == steps)
                # Previews show attention maps even when the attention loss is off (ablations compare them).
                self.record_maps = previewing
                losses = self.optimize(optimizer, draws)
                done += 1
                self._record(phase, losses)
                if callbacks.on_progress:
                    callbacks.on_progress(ProgressEvent(phase, step, steps, done, total,
                                                        {k: v.item() for k, v in losses.items()}))
                if previewing:
                    callbacks.on_preview(self._preview(phase, step, done, total, draws[0]))
            del optimizer
        return self._pack()

    def optimize(self, optimizer: torch.optim.Optimizer, draws) -> dict[str, torch.Tensor]:
        """One optimisation step: losses, backward, gradient clipping, update."""
        losses = self.training_step(draws)
        try:
            self.scaler.scale(losses["loss"]).backward()
        finally:  # after backward: gradient checkpointing recomputes the captured layers during it
            self.capture.store.stop()
        self.scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return losses

    def start_phase(self, phase: int) -> torch.optim.Optimizer:
        """Phase 1: the handle vectors. Phase 2: the handles (slowly) and the denoiser's weights."""
        config = self.config
        handles = self.text.vectors
        for vectors in handles:
            vectors.requires_grad_(True)
        if phase == 1:
            groups = [{"params": handles, "lr": config.phase1_lr}]
        else:
            groups = [{"params": handles, "lr": config.phase2_handle_lr},
                      {"params": self._phase2_parameters(), "lr": config.denoiser_lr}]
        return self.make_optimizer(groups)

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return _adamw(groups, self.config.weight_decay, self.device)

    def _phase2_parameters(self) -> list[torch.nn.Parameter]:
        c, config = self.c, self.config
        if config.mode == "lora":
            lora_generator = torch.Generator("cpu").manual_seed(config.seed + 1)
            alpha = config.lora_alpha or config.lora_rank
            self.unet_lora = inject_lora(c.unet, UNET_TARGETS, config.lora_rank, alpha, lora_generator)
            self._undo.append(lambda: remove_lora(c.unet, self.unet_lora))
            self.text_lora = {}   # pack prefix ("text_encoder", "text_encoder_2") -> adapters
            if config.train_text_encoder:
                for prefix, encoder in self._text_encoder_modules().items():
                    adapters = inject_lora(encoder, TEXT_ENCODER_TARGETS, config.lora_rank, alpha, lora_generator)
                    self.text_lora[prefix] = adapters
                    self._undo.append(lambda encoder=encoder, adapters=adapters: remove_lora(encoder, adapters))
            adapters = list(self.unet_lora.values()) + [a for text in self.text_lora.values() for a in text.values()]
            params = [p for a in adapters for p in (a.down, a.up)]
        else:
            modules = {"unet": c.unet}
            if config.train_text_encoder:
                modules.update(self._text_encoder_modules())
            self.full_params = {f"{prefix}.{name}": p for prefix, module in modules.items()
                                for name, p in module.named_parameters()
                                if "token_embedding" not in name}
            if self.keep_base_weights:
                # Kept on the CPU: deltas are taken from them and they are put back afterwards.
                self.base_weights = {k: p.detach().to("cpu", copy=True) for k, p in self.full_params.items()}
                self._undo.append(self._restore_full_weights)
            params = list(self.full_params.values())
        for p in params:
            p.requires_grad_(True)
        return params

    def _text_encoder_modules(self) -> dict[str, torch.nn.Module]:
        """The text encoders by the names packs give them: "text_encoder", "text_encoder_2" (as diffusers)."""
        return {("text_encoder" if i == 0 else f"text_encoder_{i + 1}"): encoder
                for i, (_, _, encoder) in enumerate(self.c.text_encoders())}

    @torch.no_grad()
    def _restore_full_weights(self) -> None:
        for key, p in self.full_params.items():
            p.copy_(self.base_weights[key].to(p.device))
            p.requires_grad_(False)

    # -- one step -----------------------------------------------------------------------------------
    def training_step(self, draws) -> dict[str, torch.Tensor]:
        """Forward pass and losses for one batch of concept draws (each with its own subset and flip)."""
        c, config, device = self.c, self.config, self.device
        count = self.scene.num_concepts
        chosen = torch.zeros(len(draws), count, dtype=torch.bool)
        for row, draw in enumerate(draws):
            chosen[row, draw.concepts] = True
        latents, union_masks, attention_masks = self.scene_t.batch([d.flip for d in draws], chosen,
                                                                    self.generator)
        prompts = [d.prompt for d in draws]
        if self.class_posteriors is not None:
            latents = torch.cat([latents, self._class_latents(len(draws))])
            prompts += [config.class_prompt] * len(draws)
        latents = latents * c.vae.config.scaling_factor

        noise = torch.randn(latents.shape, generator=self.generator).to(device)
        timesteps = torch.randint(0, c.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=self.generator).to(device)
        noisy = c.noise_scheduler.add_noise(latents, noise, timesteps)
        target = noise if c.prediction_type == "epsilon" else c.noise_scheduler.get_velocity(latents, noise, timesteps)

        input_ids = self.text.tokenize(prompts, device)
        use_attention = config.attention_loss_weight > 0
        if use_attention or self.record_maps:
            self.capture.store.start(self.text.positions(input_ids)[:len(draws)])
        with _autocast(self.autocast_dtype, device):
            context, added = self.text.encode(input_ids, self._size_ids(len(draws), len(prompts) - len(draws)))
            prediction = c.unet(noisy, timesteps, context, added_cond_kwargs=added).sample

        instances = len(draws)
        losses = {"diffusion": masked_diffusion_loss(prediction[:instances], target[:instances],
                                                     union_masks.to(device) if config.masked_loss else None)}
        loss = losses["diffusion"]
        if use_attention:
            maps = self.capture.store.mean_map(*self.scene_t.attention_size)
            losses["attention"] = attention_loss(maps, attention_masks, chosen.to(device))
            loss = loss + config.attention_loss_weight * losses["attention"]
            self._last_maps = maps.detach()
        elif self.record_maps:
            self._last_maps = self.capture.store.mean_map(*self.scene_t.attention_size).detach()
        if self.class_posteriors is not None:
            losses["prior"] = F.mse_loss(prediction[instances:].float(), target[instances:].float())
            loss = loss + config.prior_loss_weight * losses["prior"]
        losses["loss"] = loss
        return losses

    def _size_ids(self, instances: int, class_images: int) -> torch.Tensor | None:
        """SDXL's time ids: the scene image's own size as the original, no crop, the training size as target
        (class images were generated at the training size). None for families without them."""
        if self.c.spec.pooled_encoder is None:
            return None
        size = self.scene_t.size
        return torch.cat([time_ids(self.scene.image.shape[-2:], (0, 0), size, instances),
                          time_ids(size, (0, 0), size, class_images)])

    def _class_latents(self, count: int) -> torch.Tensor:
        posterior = self.class_posteriors
        index = torch.randint(0, posterior.mean.shape[0], (count,), generator=self.generator)
        noise = torch.randn((count, *posterior.mean.shape[1:]), generator=self.generator).to(self.device)
        return CachedPosterior(posterior.mean[index.to(self.device)], posterior.std[index.to(self.device)]).sample(noise)

    # -- bookkeeping --------------------------------------------------------------------------------
    def _record(self, phase: int, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            self.losses.setdefault(f"phase{phase}_{name}", deque(maxlen=LOSS_WINDOW)).append(value.detach())

    def _preview(self, phase: int, step: int, done: int, total: int, draw) -> PreviewEvent:
        chosen = [i in draw.concepts for i in range(self.scene.num_concepts)]
        maps = getattr(self, "_last_maps", None)
        if maps is None:
            maps = torch.zeros(self.scene.num_concepts, *self.scene_t.attention_size)
        else:
            maps = maps[0].float()
            maps = maps / maps.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
            maps = maps * torch.tensor(chosen, dtype=maps.dtype, device=maps.device)[:, None, None]
        image = self.scene_t.image.flip(-1) if draw.flip else self.scene_t.image
        return PreviewEvent(phase, step, done, total, image.float().cpu(), maps.cpu(), chosen, self.tokens,
                            draw.flip)

    def _pack(self) -> ConceptPack:
        c, config = self.c, self.config
        lora, deltas = {}, {}
        if config.phase2_steps > 0 and config.mode == "lora":
            lora = lora_state_dict(self.unet_lora, "unet")
            for prefix, adapters in self.text_lora.items():
                lora.update(lora_state_dict({canonical_text_encoder_name(k): v for k, v in adapters.items()},
                                            prefix))
        elif config.phase2_steps > 0:
            with torch.no_grad():
                for key, p in self.full_params.items():
                    delta = p.detach().cpu() - self.base_weights[key]
                    if torch.count_nonzero(delta):
                        model, _, name = key.partition(".")
                        if model.startswith("text_encoder"):
                            key = f"{model}.{canonical_text_encoder_name(name)}"
                        deltas[key] = delta.contiguous()
        final_losses = {k: float(torch.stack(list(v)).float().mean()) for k, v in self.losses.items()}
        meta = {"family": c.family, "prediction_type": c.prediction_type, "fingerprint": self.base_fingerprint,
                "encoder": c.encoder_name, "scene_fingerprint": self.scene.fingerprint(),
                "settings": config.to_dict(), "losses": final_losses,
                "training_size": list(self.scene_t.size), "attention_downscale": self.capture.downscale}
        return ConceptPack(list(self.tokens), list(self.scene.names), list(self.scene.initializers),
                           self.text.handle_vectors(),
                           "lora" if config.mode == "lora" else "full", lora, deltas, meta)


# -- helpers ----------------------------------------------------------------------------------------
def _restore_module_state(module: torch.nn.Module):
    """A function that puts back the module's training flag and each parameter's requires_grad."""
    training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]

    def restore() -> None:
        module.train(training)
        for p, flag in flags:
            p.requires_grad_(flag)
    return restore


def _autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "no" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _adamw(groups: list[dict], weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where this torch supports it on the device (one kernel for all parameters)."""
    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay, foreach=device.type == "cuda")
