"""The two-phase Break-A-Scene training loop, written once against ``model_adapter.ModelAdapter``.

Phase 1 trains only the handle embeddings (model frozen); phase 2 trains the handles and the denoiser (LoRA or
full). Each step: union sampling of concepts with a joint flip, masked diffusion loss, and the cross-attention loss
on the layers at 1/4 of the latent resolution; optionally prior preservation. The model behind the adapter is
diffusers' (``diffusers_model.DiffusersModel``, the CLI and Python API) or ComfyUI's own (the node pack's adapter).
"""
from __future__ import annotations

import os
from collections import deque

import torch
import torch.nn.functional as F

from .callbacks import PreviewEvent, ProgressEvent, TrainCallbacks
from .config import TrainConfig
from .handles import default_tokens
from .latents import CachedPosterior, SceneTensors, training_size
from .losses import attention_loss, masked_diffusion_loss, pool_to_patches
from .model_adapter import ModelAdapter, SizeCondition
from .pack import ConceptPack
from .sampling import ConceptSampler
from .scene import Scene

LOSS_WINDOW = 20  # the pack's "final losses" are the mean over the last steps of each phase


def train(model, scene: Scene, config: TrainConfig | None = None, callbacks: TrainCallbacks | None = None,
          device: str | torch.device | None = None, cache_dir: str | None = None) -> ConceptPack:
    """Run both phases on `scene` and return the concept pack.

    ``model``: an ``SDComponents`` (diffusers modules) or any ``ModelAdapter``. The model is left as it was:
    handles, adapters and hooks are attached only for the run, and full-mode weights are restored after their
    deltas are taken.
    """
    config = config or TrainConfig()
    config.validate(scene.num_concepts)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with TrainingRun(model, scene, config, device, cache_dir) as run:
        return run.train(callbacks or TrainCallbacks())


def as_model_adapter(model) -> ModelAdapter:
    """The model as the loop takes it: an adapter as it is, diffusers components wrapped in ``DiffusersModel``."""
    if isinstance(model, ModelAdapter):
        return model
    from .diffusers_model import DiffusersModel

    return DiffusersModel(model)


class TrainingRun:
    """State of one run: handles, hooks, cached scene, losses; a context manager that cleans up."""

    def __init__(self, model, scene: Scene, config: TrainConfig, device: torch.device, cache_dir: str | None = None):
        self.model = as_model_adapter(model)
        self.scene, self.config, self.device = scene, config, device
        self.cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "break_a_scene")
        self.tokens = config.tokens or default_tokens(scene.num_concepts)
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.sampler = ConceptSampler(self.tokens, config.seed, config.union_sampling, config.flip)
        self.compute_dtype = self.model.compute_dtype(config.mixed_precision, device)
        # fp16 needs loss scaling; for bf16/fp32 the scaler is a pass-through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.compute_dtype == torch.float16)
        self.losses: dict[str, deque] = {}
        self.record_maps = False  # capture attention maps this step although the attention loss is off

    # -- setup and teardown -------------------------------------------------------------------------
    def __enter__(self) -> "TrainingRun":
        try:
            self._setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _setup(self) -> None:
        model, config = self.model, self.config
        self.base_fingerprint = model.fingerprint()  # before anything is attached to the model
        # A size that cannot fit is an error before anything is allocated.
        size = training_size(*self.scene.image.shape[-2:], config.resolution, model.vae_scale)
        checkpointing = model.prepare(self.device, self.compute_dtype, config, size)
        initializers = [init or (name if name != f"asset{i}" else None)
                        for i, (name, init) in enumerate(zip(self.scene.names, self.scene.initializers))]
        # the handles in every text encoder of the family, and the denoiser's text inputs built with them
        self.text = model.text_handles(self.tokens, initializers)
        self.capture = model.attention_hooks(config.attention_downscale)
        # Latent sides must pass every downsampling of the denoiser and give whole attention-map pixels.
        latent_multiple = max(model.latent_multiple, self.capture.downscale)
        self.scene_t = SceneTensors(self.scene, model.encode_pixels, config.resolution,
                                    model.vae_scale * latent_multiple, model.vae_scale, self.capture.downscale,
                                    self.device)
        self.class_posteriors = self._prepare_prior() if config.prior_preservation else None
        if checkpointing:
            model.enable_gradient_checkpointing()

    def __exit__(self, *exc) -> None:
        try:
            self.model.release()
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _prepare_prior(self) -> CachedPosterior:
        config = self.config
        images = self.model.class_images(config.class_prompt, config.num_class_images, self.scene_t.size,
                                         config.class_inference_steps, self.cache_dir, config.seed)
        pixels = torch.stack(images).to(self.device) * 2 - 1
        return self.model.encode_pixels(pixels)

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
            lora_generator = torch.Generator("cpu").manual_seed(config.seed + 1)
            params = self.model.phase2_parameters(config, lora_generator)
            for p in params:
                p.requires_grad_(True)
            groups = [{"params": handles, "lr": config.phase2_handle_lr},
                      {"params": params, "lr": config.denoiser_lr}]
        return self.make_optimizer(groups)

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return _adamw(groups, self.config.weight_decay, self.device)

    # -- one step -----------------------------------------------------------------------------------
    def training_step(self, draws) -> dict[str, torch.Tensor]:
        """Forward pass and losses for one batch of concept draws (each with its own subset and flip)."""
        model, config, device = self.model, self.config, self.device
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
        latents = model.latents_in(latents)

        noise = torch.randn(latents.shape, generator=self.generator).to(device)
        timesteps = torch.randint(0, model.num_train_timesteps, (latents.shape[0],),
                                  generator=self.generator).to(device)
        noisy, target = model.add_noise(latents, noise, timesteps)

        batch = self.text.tokenize(prompts, device)
        use_attention = config.attention_loss_weight > 0
        if use_attention or self.record_maps:
            self.capture.store.start(batch.positions[:len(draws)].to(device))
        with model.forward_context():
            conditioning = self.text.encode(batch, self._sizes(len(draws), len(prompts) - len(draws)))
            prediction = model.predict(noisy, timesteps, conditioning)

        instances = len(draws)
        mask = pool_to_patches(union_masks.to(device), model.patch_size) if config.masked_loss else None
        losses = {"diffusion": masked_diffusion_loss(prediction[:instances], target[:instances], mask)}
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

    def _sizes(self, instances: int, class_images: int) -> list[SizeCondition]:
        """Size conditioning (families with a pooled encoder read it): the scene image's own size as the original,
        no crop, the training size as target; class images were generated at the training size."""
        size = self.scene_t.size
        sizes = [SizeCondition(tuple(self.scene.image.shape[-2:]), (0, 0), size, instances)]
        if class_images:
            sizes.append(SizeCondition(size, (0, 0), size, class_images))
        return sizes

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
        model, config = self.model, self.config
        lora, deltas = model.phase2_weights() if config.phase2_steps > 0 else ({}, {})
        final_losses = {k: float(torch.stack(list(v)).float().mean()) for k, v in self.losses.items()}
        meta = {"family": model.family.key, "prediction_type": model.prediction_type,
                "fingerprint": self.base_fingerprint, "encoder": model.encoder_name,
                "scene_fingerprint": self.scene.fingerprint(), "settings": config.to_dict(), "losses": final_losses,
                "training_size": list(self.scene_t.size), "attention_downscale": self.capture.downscale}
        return ConceptPack(list(self.tokens), list(self.scene.names), list(self.scene.initializers),
                           self.text.handle_vectors(), "lora" if config.mode == "lora" else "full", lora, deltas,
                           meta)


# -- helpers ----------------------------------------------------------------------------------------
def _adamw(groups: list[dict], weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where this torch supports it on the device (one kernel for all parameters)."""
    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay, foreach=device.type == "cuda")
