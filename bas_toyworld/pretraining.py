"""The toy model's pretraining, piece by piece: the scene stream, the VAE and UNet phases, their loss weights, the
resumable training state and the validation gaps. ``scripts/pretrain_toy.py`` is the command that plans a run
from its options and calls these (its docstring has the recipe and how to resume).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from bas_engine.fileio import atomic_path

from .curriculum import spec_maker
from .world import SceneSpec, render_scene
from .worlds import WORLDS, get_world


class SceneStream:
    """Endless deterministic stream of (images in [-1, 1], captions) from the world (v3: of the curriculum's stage
    at the UNet step given to ``batch``)."""

    def __init__(self, seed: int, count_weights: tuple[float, ...] | None = None, world: str = "v1",
                 curriculum: tuple[int, ...] = (), start: int = 0):
        # a run continued at UNet step ``start`` (--continue-from) draws from streams of its own
        at = [start] if start else []
        self.spec_rng = np.random.default_rng([seed, 11, *at])
        self.text_rng = np.random.default_rng([seed, 12, *at])
        self.make_spec = spec_maker(world, count_weights, curriculum)
        self.caption = get_world(world).caption

    def state(self) -> dict:
        """The stream's position (both generators), for a resumable checkpoint."""
        return {"spec": self.spec_rng.bit_generator.state, "text": self.text_rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.spec_rng.bit_generator.state = state["spec"]
        self.text_rng.bit_generator.state = state["text"]

    def batch(self, n: int, with_masks: bool = False, step: int | None = None):
        """(images (n, 3, 64, 64) in [-1, 1], captions[, object masks (n, 1, 64, 64) float]); ``step``: the UNet
        step the batch is for (picks the curriculum's stage; None = the whole world)."""
        specs = [self.make_spec(self.spec_rng, step) for _ in range(n)]
        rendered = [render_scene(s) for s in specs]
        x = torch.from_numpy(np.stack([r[0] for r in rendered])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        caps = [self.caption(s, self.text_rng) for s in specs]
        if not with_masks:
            return x, caps
        m = np.stack([np.any(r[1], axis=0) for r in rendered])[:, None]
        return x, caps, torch.from_numpy(m).float()


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))  # cosine down to 10%


STATE_FILE = "state.pt"


class Halted(Exception):
    """Raised after the state at --halt-at is written: the run stops as if it had been interrupted there."""


class StateSaver:
    """Writes the full training state to OUT/state.pt (atomically: a killed write leaves the previous one) every
    ``every`` steps and every ``minutes`` minutes of wall clock; saving reads no random generator, so when it
    happens does not change the run. ``tick`` is called after each step with the global step count (VAE steps,
    then UNet steps) and a function that returns the state."""

    def __init__(self, path: Path, every: int = 0, minutes: float = 0.0, halt_at: int | None = None):
        self.path, self.every, self.minutes, self.halt_at = path, every, minutes, halt_at
        self.last = time.time()

    def tick(self, global_step: int, state, force: bool = False) -> None:
        due = force or (self.every and global_step % self.every == 0) or global_step == self.halt_at or (
            self.minutes and time.time() - self.last >= self.minutes * 60)
        if not due:
            return
        with atomic_path(self.path) as tmp:
            torch.save(state(), tmp)
        self.last = time.time()
        print(f"[state] step {global_step} -> {self.path}", flush=True)
        if global_step == self.halt_at:
            raise Halted(global_step)


def train_vae(vae, stream: SceneStream, steps: int, batch: int, lr: float, deadline: float | None, log: dict,
              saver: StateSaver | None = None, common_state=None, resume: dict | None = None) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    device = next(vae.parameters()).device
    hist, first = [], 0
    if resume is not None:
        opt.load_state_dict(resume["opt"])
        hist, first = list(resume["hist"]), resume["step"]
    vae.train()
    t0 = time.time()
    for step in range(first, steps):
        if deadline is not None and time.time() > deadline:
            log["vae_truncated_at"] = step
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 50)
        x, _, objects = stream.batch(batch, with_masks=True)
        x, objects = x.to(device), objects.to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        # L1 keeps edges and texture ink crisp. Object pixels weigh 5x: they are few, and with a
        # plain loss the VAE learns the large backgrounds first and the object colours late.
        # The KL term only keeps the latent scale sane.
        w = 1.0 + 4.0 * objects
        loss = (w * (rec - x).abs()).mean() / w.mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"[vae] {step}/{steps} l1 {np.mean(hist[-50:]):.4f} {(time.time() - t0) / (step + 1 - first):.2f}s/step", flush=True)
        if saver is not None:
            saver.tick(step + 1, lambda: common_state("vae", {"opt": opt.state_dict(), "hist": hist, "step": step + 1}))
    vae.eval()
    log["vae_steps"] = len(hist)
    log["vae_loss"] = [float(np.mean(hist[i:i + 50])) for i in range(0, len(hist), 50)]
    log["vae_s_per_step"] = (time.time() - t0) / max(1, len(hist) - first)


@torch.no_grad()
def latent_scaling(vae, stream: SceneStream, n: int = 128) -> tuple[float, float]:
    """1/std of latents (as SD's 0.18215), and the reconstruction PSNR on fresh scenes."""
    x, _ = stream.batch(n)
    x = x.to(next(vae.parameters()).device)
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
    return 1.0 / float(post.sample().std()), 10 * math.log10(1.0 / max(mse, 1e-10))


def ema_of(modules: list[torch.nn.Module]) -> EMAModel:
    """diffusers' EMAModel over the modules' parameters: decay min(0.998, (1 + n) / (10 + n)) at the n-th update
    (the first update copies). The committed toy weights were made with an earlier hand-written EMA whose first
    update used decay 0.1 instead of 0 (and lerp instead of EMAModel's subtraction): a rerun matches them up to
    float rounding, not bit for bit."""
    return EMAModel([p for m in modules for p in m.parameters()], decay=0.998)


@torch.no_grad()
def averaged_copies(ema: EMAModel, modules: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """Deep copies of ``modules`` (the ones the EMA was made over, same order) holding the EMA weights."""
    import copy

    copies = [copy.deepcopy(m) for m in modules]
    ema.copy_to([p for m in copies for p in m.parameters()])
    return copies


def train_diffusion(unet, text_encoder, vae, tokenizer, scheduler, stream: SceneStream, steps: int, batch: int,
                    lr: float, text_lr: float, deadline: float | None, seed: int, log: dict, offset_noise: float = 0.0,
                    high_noise_weight: float = 1.0, object_weight: float = 1.0, high_t_share: float = 0.0,
                    checkpoint=None,
                    checkpoint_every: int = 0,
                    stop_at: int | None = None, saver: StateSaver | None = None, common_state=None,
                    step_offset: int = 0, resume: dict | None = None, val_every: int = 200,
                    world: str = "v1", start_step: int = 0) -> EMAModel:
    """The UNet phase, steps ``start_step`` (0, or where --continue-from picks up) to ``steps``; ``resume``: a
    state's phase part, which continues exactly (optimizer, EMA, generators)."""
    if start_step:  # a continued run: fresh generators of its own, the optimizer's moments start at zero
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 1, start_step]).generate_state(1)[0]))
        drop_rng = np.random.default_rng([seed, 13, start_step])
    else:
        gen = torch.Generator().manual_seed(seed + 1)
        drop_rng = np.random.default_rng([seed, 13])
    opt = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": lr, "base": lr},
        {"params": text_encoder.parameters(), "lr": text_lr, "base": text_lr},
    ], betas=(0.9, 0.99), weight_decay=0.01)
    ema = ema_of([unet, text_encoder])
    hist, first = [], start_step
    if resume is not None:
        opt.load_state_dict(resume["opt"])
        ema.load_state_dict(resume["ema"])
        gen.set_state(resume["gen"])
        drop_rng.bit_generator.state = resume["drop_rng"]
        hist, first = list(resume["hist"]), resume["step"]
    else:
        log["val"] = []
    device = next(unet.parameters()).device
    ema.to(device)  # a state is loaded on the CPU
    acp = scheduler.alphas_cumprod
    val = _validation_batch(vae, tokenizer, scheduler, seed, world=world)
    unet.train()
    text_encoder.train()
    t0 = time.time()

    def phase_state(done: int) -> dict:
        return {"opt": opt.state_dict(), "ema": ema.state_dict(), "gen": gen.get_state(),
                "drop_rng": drop_rng.bit_generator.state, "hist": hist, "step": done}

    reached = first
    for step in range(first, steps):
        if (deadline is not None and time.time() > deadline) or (stop_at is not None and step >= stop_at):
            log["unet_truncated_at"] = step
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, g["base"], 100)
        if object_weight != 1.0:
            x, caps, objects = stream.batch(batch, with_masks=True, step=step)
            objects = objects.to(device)
        else:
            x, caps = stream.batch(batch, step=step)
        x = x.to(device)
        caps = ["" if drop_rng.random() < 0.1 else c for c in caps]  # unconditional for CFG
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            lat = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)) * vae.config.scaling_factor
        # drawn by the CPU generator on any device (then moved), so a run's noise does not depend on the device
        noise = torch.randn(lat.shape, generator=gen)
        if offset_noise > 0:  # per-image, per-channel constant: hides the global colour at any t
            noise = noise + offset_noise * torch.randn(batch, lat.shape[1], 1, 1, generator=gen)
        noise = noise.to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        if high_t_share > 0:
            # Outlines are decided in the noisy upper half of the schedule (research/x0_probe.py: every model keeps
            # a shape it is shown up to t~600 and makes none at t>=800): spend more of the steps there.
            n_t = scheduler.config.num_train_timesteps
            upper = torch.randint(n_t // 2, n_t, (batch,), generator=gen)
            t = torch.where(torch.rand(batch, generator=gen) < high_t_share, upper, t)
        w = loss_weight(acp[t], scheduler.config.prediction_type, high_noise_weight).to(device)
        t = t.to(device)
        noisy = scheduler.add_noise(lat, noise, t)
        ctx = text_encoder(ids)[0]
        pred = unet(noisy, t, ctx).sample
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(lat, noise, t)
        if object_weight != 1.0:
            per_image = object_weighted_mse(pred, target, objects, object_weight)
        else:
            per_image = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (w * per_image).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        ema.step([p for m in (unet, text_encoder) for p in m.parameters()])
        hist.append(loss.item())
        reached = step + 1
        if step % val_every == 0 or step == steps - 1:
            log["val"].append({"step": step, **_conditioning_gap(unet, text_encoder, val)})
            print(f"[val] {log['val'][-1]}", flush=True)
        if checkpoint is not None and checkpoint_every and step > 0 and step % checkpoint_every == 0:
            checkpoint(ema, step)  # EMA weights so far: lets a long run be inspected while it goes on
        if step % 25 == 0 or step == steps - 1:
            sps = (time.time() - t0) / (step + 1 - first)
            print(f"[unet] {step}/{steps} loss {np.mean(hist[-50:]):.4f} {sps:.2f}s/step "
                  f"eta {sps * (steps - step - 1) / 60:.1f} min", flush=True)
        if saver is not None:
            saver.tick(step_offset + step + 1, lambda: common_state("unet", phase_state(step + 1)),
                       force=step == steps - 1)
    log["unet_steps"] = reached  # a continued run's hist starts at its checkpoint's step
    log["unet_loss"] = [float(np.mean(hist[i:i + 50])) for i in range(0, len(hist), 50)]
    log["unet_s_per_step"] = (time.time() - t0) / max(1, reached - first)
    unet.eval()
    text_encoder.eval()
    return ema


def loss_weight(alphas_cumprod: torch.Tensor, prediction_type: str, high_noise_weight: float) -> torch.Tensor:
    """Per-image weight of the denoising MSE at noise levels with these cumulative alphas.

    Epsilon: min-SNR-5 (stops the many easy low-noise steps from dominating; converges markedly faster for small
    budgets) times a capped (1 + 1/snr) boost of noisy steps: epsilon loss weighs a wrong x0 by the snr, which all
    but ignores the noisy steps where the caption matters. v (zero terminal SNR, snr 0 at the last step): the
    weight that makes the loss weigh a wrong x0 by clamp(snr, 1, 5) (v loss weighs it by snr + 1), i.e.
    min-SNR-5 with the noisy steps counting like snr 1, the pure-noise step included."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    if prediction_type == "v_prediction":
        return torch.clamp(snr, 1.0, 5.0) / (snr + 1)
    w = torch.clamp(snr, max=5.0) / snr
    if high_noise_weight > 1:
        w = w * torch.clamp(1 + 1 / snr, max=high_noise_weight)
    return w


def zero_new_attention_outputs(unet: torch.nn.Module, grown: set[str]) -> None:
    """Zero the output projections of the attention blocks a fork added, so the grown UNet computes exactly what
    the state's UNet did (each block is a residual branch)."""
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name in grown and ".proj_out." in name:
                p.zero_()


def grow_phase_state(phase_state: dict, old_unet_names: list[str], unet: torch.nn.Module,
                     text_encoder: torch.nn.Module) -> dict:
    """The UNet phase's optimizer and EMA state re-indexed for a UNet grown by new parameters (``old_unet_names``:
    the state's UNet parameters, in its order): the old parameters keep their Adam moments and EMA averages, the new
    ones start fresh (no moments; EMA = their initial values)."""
    new_unet_names = [n for n, _ in unet.named_parameters()]
    n_text = len(list(text_encoder.parameters()))
    where = {n: i for i, n in enumerate(old_unet_names)}
    # flat index of each parameter (UNet, then text encoder) in the new order -> its index in the old one
    old_index = [where.get(n) for n in new_unet_names] + [len(old_unet_names) + i for i in range(n_text)]
    opt = phase_state["opt"]
    state = {new: opt["state"][old] for new, old in enumerate(old_index) if old is not None and old in opt["state"]}
    groups = [dict(opt["param_groups"][0], params=list(range(len(new_unet_names)))),
              dict(opt["param_groups"][1], params=list(range(len(new_unet_names), len(old_index))))]
    ema = dict(phase_state["ema"])
    params = [p for p in unet.parameters()] + [p for p in text_encoder.parameters()]
    ema["shadow_params"] = [ema["shadow_params"][old].clone() if old is not None else p.detach().clone()
                            for old, p in zip(old_index, params)]
    return dict(phase_state, opt={"state": state, "param_groups": groups}, ema=ema)


def object_weighted_mse(pred: torch.Tensor, target: torch.Tensor, objects: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-image MSE with the objects' latent pixels (and a 1-pixel rim, where outlines are decided) counting
    ``weight`` times: the objects are 4-15 % of a picture, and the backgrounds' fine, unpredictable detail (night
    stars, grass blades) otherwise takes most of the loss, while a shape is a few latent pixels of outline."""
    factor = objects.shape[-1] // pred.shape[-1]
    inside = (F.avg_pool2d(objects, factor) > 0).float()
    rim = F.max_pool2d(inside, 3, stride=1, padding=1)
    weights = 1.0 + (weight - 1.0) * rim
    err = F.mse_loss(pred, target, reduction="none").mean(dim=1, keepdim=True)
    return (weights * err).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3))


def other_shape(spec: SceneSpec, i: int, shapes: tuple[str, ...] = WORLDS["v1"].shapes) -> SceneSpec:
    """The one-object scene with its object's shape replaced by another of ``shapes`` (which one cycles with ``i``)."""
    o = spec.objects[0]
    k = len(shapes)
    return replace(spec, objects=(replace(o, shape=shapes[(shapes.index(o.shape) + 1 + i % (k - 1)) % k]),))


@torch.no_grad()
def _validation_batch(vae, tokenizer, scheduler, seed: int, n: int = 32, world: str = "v1") -> dict:
    """Fixed held-out scenes, noise and timesteps (upper half of t, where the caption matters most), and
    one-object scenes with their caption and the same caption naming another shape (t in [200, 800), where
    outlines form) for the shape gap. Scenes of the whole ``world`` (not of a curriculum stage)."""
    device = next(vae.parameters()).device
    stream = SceneStream(seed + 10_000, world=world)
    w = get_world(world)
    x, caps = stream.batch(n)
    gen = torch.Generator().manual_seed(seed + 2)
    lat = vae.encode(x.to(device)).latent_dist.mean * vae.config.scaling_factor
    noise = torch.randn(lat.shape, generator=gen)
    t = torch.randint(500, 1000, (n,), generator=gen)
    enc = lambda texts: tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,  # noqa: E731
                                  truncation=True, return_tensors="pt").input_ids.to(device)
    rng = np.random.default_rng([seed, 10_001])
    singles = [w.random_spec(rng, count_weights=(1.0,)) for _ in range(n)]
    others = [other_shape(s, i, w.shapes) for i, s in enumerate(singles)]
    x1 = torch.from_numpy(np.stack([render_scene(s)[0] for s in singles])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    lat1 = vae.encode(x1.to(device)).latent_dist.mean * vae.config.scaling_factor
    noise1 = torch.randn(lat1.shape, generator=gen)
    t1 = torch.randint(200, 800, (n,), generator=gen)
    noise, t, noise1, t1 = (v.to(device) for v in (noise, t, noise1, t1))
    target = (lambda x0, eps, ts: eps) if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity
    return {"noisy": scheduler.add_noise(lat, noise, t), "target": target(lat, noise, t), "t": t, "ids": enc(caps),
            "empty": enc([""] * n),
            "shape": {"noisy": scheduler.add_noise(lat1, noise1, t1), "target": target(lat1, noise1, t1), "t": t1,
                      "ids": enc([w.caption(s) for s in singles]), "other": enc([w.caption(s) for s in others])}}


@torch.no_grad()
def _conditioning_gap(unet, text_encoder, val: dict) -> dict:
    """Denoising loss with the true captions vs with empty ones: the gap shows how much the model
    uses the text (0 = ignores it). The shape gap: on one-object scenes, the loss with the caption naming
    another shape minus with the true caption (0 = the shape word does not matter to the model)."""
    was = unet.training
    unet.eval()
    text_encoder.eval()
    out = {}
    for key in ("ids", "empty"):
        pred = unet(val["noisy"], val["t"], text_encoder(val[key])[0]).sample
        out["loss_caption" if key == "ids" else "loss_empty"] = F.mse_loss(pred, val["target"]).item()
    out["gap"] = out["loss_empty"] - out["loss_caption"]
    sv = val["shape"]
    losses = [F.mse_loss(unet(sv["noisy"], sv["t"], text_encoder(sv[key])[0]).sample, sv["target"]).item()
              for key in ("ids", "other")]
    out["shape_gap"] = losses[1] - losses[0]
    unet.train(was)
    text_encoder.train(was)
    return out
