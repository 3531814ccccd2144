"""Where in the noise schedule does a toy model lose (or fail to create) an object's shape?

For held-out one-object scenes, the world's render is noised to timestep t, the model predicts the clean latent
in one step (x0 from its epsilon or v, with the true caption), the VAE decodes it and the judge scores it like
`bas toy-eval`. Shape right at t=200 but not at t=800 means the model keeps outlines it is shown but does not make
them from the caption where they are decided (high noise). Low-noise and cheap (one forward pass per t): a
sharper signal for comparing pretraining runs than toy-eval's generated images.

    .venv/bin/python research/x0_probe.py MODEL_DIR [--scenes 24] [--timesteps 200,400,600,800,900,980]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch

from bas_toyworld.judge import detect
from bas_toyworld.model import build_scheduler, load_pipeline
from bas_toyworld.toy_eval import ATTRIBUTES, heldout_cases, verdicts
from bas_toyworld.world import SHAPES, caption, render_scene


@torch.no_grad()
def x0_probe(model_dir: str, scenes: int = 24, timesteps: tuple[int, ...] = (200, 400, 600, 800, 900, 980),
             seed: int = 0, sd_noise: bool = False, other_shape: bool = False) -> dict[int, dict[str, float]]:
    """Share of the one-step x0 predictions with each attribute right, per timestep. ``sd_noise``: each t names
    the noise level of SD 1.x's schedule at t (v1/v2's), and the model is probed at its own timestep nearest to
    it, so that models on other schedules (v2v's zero terminal SNR) are compared at equal noise. ``other_shape``:
    the caption names another shape than the render's and "shape" is the share that drew the caption's shape
    (chance 1 in 6 when the model reads the shape off the image only)."""
    pipe = load_pipeline(model_dir)
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    cases = heldout_cases(scenes, seed=seed)
    pixels = torch.from_numpy(np.stack([render_scene(c.spec)[0] for c in cases])).permute(0, 3, 1, 2).float()
    latents = vae.encode(pixels / 127.5 - 1).latent_dist.mean * vae.config.scaling_factor
    asked = [c.spec for c in cases]
    if other_shape:  # the next shape in the world's list: never the render's
        asked = [replace(sp, objects=(replace(sp.objects[0], shape=SHAPES[(SHAPES.index(sp.objects[0].shape) + 1)
                                                                          % len(SHAPES)]),)) for sp in asked]
    ids = pipe.tokenizer([caption(sp) for sp in asked], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    context = pipe.text_encoder(ids)[0]
    generator = torch.Generator().manual_seed(seed)
    out = {}
    reference = build_scheduler().alphas_cumprod
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        t_model = int((scheduler.alphas_cumprod - reference[t]).abs().argmin()) if sd_noise else t
        keep = scheduler.alphas_cumprod[t_model]
        noisy = keep.sqrt() * latents + (1 - keep).sqrt() * noise
        pred = unet(noisy, torch.full((len(cases),), t_model), context).sample
        if scheduler.config.prediction_type == "v_prediction":
            x0 = keep.sqrt() * noisy - (1 - keep).sqrt() * pred
        else:
            x0 = (noisy - (1 - keep).sqrt() * pred) / keep.sqrt()
        images = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
        images = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
        rows = [verdicts(detect(im), sp) for im, sp in zip(images, asked)]
        out[t] = {a: float(np.mean([r[a] for r in rows])) for a in ATTRIBUTES} | {"model_t": t_model}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--timesteps", default="200,400,600,800,900,980")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--other-shape", action="store_true",
                    help="the caption names another shape; 'shape' = share that drew the caption's shape")
    ap.add_argument("--sd-noise", action="store_true",
                    help="read each timestep as SD 1.x's noise level there (compare models on other schedules)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = x0_probe(a.model_dir, a.scenes, tuple(int(t) for t in a.timesteps.split(",")), sd_noise=a.sd_noise,
                      other_shape=a.other_shape)
    for t, acc in result.items():
        print(f"t {t:4d} (model t {acc['model_t']:4d})  " + "  ".join(f"{k} {acc[k]:.2f}" for k in ATTRIBUTES))
    print(json.dumps({"model_dir": a.model_dir, "scenes": a.scenes, "x0_accuracy": result}))


if __name__ == "__main__":
    main()
