"""Can a toy model learn to draw the caption's shape when the world is narrowed to one easy kind of scene?

Fine-tunes a copy of the model's UNet (text encoder frozen unless --train-text) on one-object scenes of one texture,
size and background (default: a large solid object on white: only shape, colour and place vary; "any" keeps one
free, all three "any" is pretraining's one-object world) and reports, before and every --every steps, the shape gap
by noise level (held-out scenes of that kind: the denoising loss with the caption naming another shape minus with
the true caption, in % of the latter; 0 = the shape word does not matter) and what the judge reads off images
generated from held-out captions of that kind (scored as `bas toy-eval` does). Separates "the world is too varied
for the budget" (the shape comes quickly here) from "the model learns outlines slowly" (it does not). Nothing is
written unless --save.

    .venv/bin/python research/narrow_world_probe.py MODEL_DIR [--steps 300] [--gen 32] [--texture solid]
        [--size large] [--background white] [--save UNET_DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from bas_toyworld.judge import detect
from bas_toyworld.model import load_pipeline
from bas_toyworld.pretraining import loss_weight, other_shape
from bas_toyworld.toy_eval import accuracy, generate, verdicts
from bas_toyworld.world import BACKGROUNDS, SIZES, TEXTURES, SceneSpec, caption, random_spec, render_scene

GAP_TIMESTEPS = (300, 500, 700, 850, 950)


ANY = "any"


def narrow_spec(rng: np.random.Generator, texture: str, size: str, background: str) -> SceneSpec:
    """A random one-object scene with the object's texture and size and the background fixed (each unless "any")."""
    spec = random_spec(rng, count_weights=(1.0,), backgrounds=None if background == ANY else (background,))
    o = spec.objects[0]
    o = replace(o, texture=o.texture if texture == ANY else texture, size=o.size if size == ANY else size)
    margin = o.radius + 1.0  # a size made larger after placing must still fit in the picture, as random_spec's do
    clamp = lambda c: float(min(max(c, margin), spec.size - margin))  # noqa: E731
    return replace(spec, objects=(replace(o, x=clamp(o.x), y=clamp(o.y)),))


def narrow_world_probe(model_dir: str, steps: int = 300, lr: float = 1e-4, texture: str = "solid",
                       size: str = "large", background: str = "white", train_text: bool = False, batch: int = 16,
                       scenes: int = 48, gen: int = 32, every: int = 50, seed: int = 0, save: str = "") -> dict:
    """Fine-tune on the narrowed world and measure, before and every ``every`` steps, the shape gap and the judged
    accuracy of generated images. Returns {"gap": {step: {t: %}}, "judged": {step: {attribute: share}}}."""
    pipe = load_pipeline(model_dir)
    unet, text_encoder, vae, scheduler, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.scheduler, pipe.tokenizer
    epsilon = scheduler.config.prediction_type == "epsilon"

    def encode_text(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids)[0]

    @torch.no_grad()
    def latents_of(specs: list[SceneSpec]) -> torch.Tensor:
        x = torch.from_numpy(np.stack([render_scene(s)[0] for s in specs])).permute(0, 3, 1, 2).float() / 127.5 - 1
        return vae.encode(x).latent_dist.mean * vae.config.scaling_factor

    def target(lat: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise if epsilon else scheduler.get_velocity(lat, noise, t)

    held_rng = np.random.default_rng([seed, 1])
    held = [narrow_spec(held_rng, texture, size, background) for _ in range(scenes)]
    held_latents = latents_of(held)
    held_noise = torch.randn(held_latents.shape, generator=torch.Generator().manual_seed(seed + 2))
    true_caps, other_caps = [caption(s) for s in held], [caption(other_shape(s, i)) for i, s in enumerate(held)]
    gen_rng = np.random.default_rng([seed, 3])
    gen_specs = [narrow_spec(gen_rng, texture, size, background) for _ in range(gen)]

    @torch.no_grad()
    def shape_gap() -> dict[int, float]:
        unet.eval()
        text_encoder.eval()
        true_ctx, other_ctx = encode_text(true_caps), encode_text(other_caps)
        out = {}
        for t in GAP_TIMESTEPS:
            ts = torch.full((scenes,), t)
            noisy = scheduler.add_noise(held_latents, held_noise, ts)
            goal = target(held_latents, held_noise, ts)
            loss_true = F.mse_loss(unet(noisy, ts, true_ctx).sample, goal).item()
            loss_other = F.mse_loss(unet(noisy, ts, other_ctx).sample, goal).item()
            out[t] = round(100 * (loss_other - loss_true) / loss_true, 2)
        return out

    @torch.no_grad()
    def judged() -> dict[str, float]:
        if not gen_specs:
            return {}
        unet.eval()
        text_encoder.eval()
        images = generate(pipe, [caption(s) for s in gen_specs], seed=seed)
        return accuracy([verdicts(detect(im), s) for im, s in zip(images, gen_specs)])

    result = {"gap": {0: shape_gap()}, "judged": {0: judged()}}
    print(f"step 0: shape gap % by t {result['gap'][0]}; judged {result['judged'][0]}", flush=True)
    text_encoder.requires_grad_(train_text)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    train_rng = np.random.default_rng([seed, 4])
    noise_gen = torch.Generator().manual_seed(seed + 5)
    training_seconds = 0.0  # the measurements not counted
    for step in range(1, steps + 1):
        started = time.time()
        unet.train()
        text_encoder.train(train_text)
        specs = [narrow_spec(train_rng, texture, size, background) for _ in range(batch)]
        lat = latents_of(specs)
        noise = torch.randn(lat.shape, generator=noise_gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=noise_gen)
        pred = unet(scheduler.add_noise(lat, noise, t), t, encode_text([caption(s, train_rng) for s in specs])).sample
        per_image = F.mse_loss(pred, target(lat, noise, t), reduction="none").mean(dim=(1, 2, 3))
        loss = (loss_weight(scheduler.alphas_cumprod[t], scheduler.config.prediction_type, 1.0) * per_image).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        training_seconds += time.time() - started
        if step % every == 0 or step == steps:
            result["gap"][step], result["judged"][step] = shape_gap(), judged()
            print(f"step {step}: loss {loss.item():.4f}, {training_seconds / step:.2f} s/step, shape gap % by t "
                  f"{result['gap'][step]}; judged {result['judged'][step]}", flush=True)
    if save:
        unet.save_pretrained(save)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--texture", default="solid", help="the objects' texture (solid, striped, dotted, checkered; any = all)")
    p.add_argument("--size", default="large", help="the objects' size (small, large; any = both)")
    p.add_argument("--background", default="white", help="the background (white, gray, beach, night, grass, tiles; any = all)")
    p.add_argument("--train-text", action="store_true", help="train the text encoder too")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scenes", type=int, default=48, help="held-out scenes of the shape gap")
    p.add_argument("--gen", type=int, default=32, help="captions generated and judged at each report (0 = none)")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", default="", help="write the fine-tuned UNet to this folder")
    a = p.parse_args()
    for name, value, allowed in (("--texture", a.texture, TEXTURES), ("--size", a.size, SIZES),
                                 ("--background", a.background, BACKGROUNDS)):
        if value != ANY and value not in allowed:
            p.error(f"{name} {value!r} is neither {ANY!r} nor one of the world's: {', '.join(allowed)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    result = narrow_world_probe(a.model, a.steps, a.lr, a.texture, a.size, a.background, a.train_text, a.batch,
                                a.scenes, a.gen, a.every, a.seed, a.save)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
