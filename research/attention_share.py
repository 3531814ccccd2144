"""Does an object's caption word reach the object? The cross-attention share of each word, averaged over the pixels
of the object, per cross-attention layer, for a toy model on noised renders of held-out one-object captions.

With ~40 token positions a share of 0.025 is uniform attention; a word well above it at some layer is delivered to
the object's pixels there (what the UNet then does with it is another question: research/x0_probe.py --other-shape).

    .venv/bin/python research/attention_share.py MODEL_DIR [--t 567] [--scenes 24]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from bas_engine.attention import AttentionStore
from bas_engine.diffusers_attention import CaptureAttnProcessor
from bas_toyworld.model import load_pipeline
from bas_toyworld.toy_eval import heldout_cases
from bas_toyworld.world import render_scene


@torch.no_grad()
def attention_share(model_dir: str, t: int = 567, scenes: int = 24, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per cross-attention layer (name -> {"resolution", "colour", "texture", "shape", "eos+pad"}): the mean share of
    attention the object's pixels give to its colour, texture and shape words and to the end of the caption."""
    pipe = load_pipeline(model_dir)
    unet, tok = pipe.unet, pipe.tokenizer
    # the engine's capture processors (the attention loss's), keeping every token's column of every attn2 layer
    store = AttentionStore()
    unet.set_attn_processor({n: CaptureAttnProcessor(store, n) if n.endswith("attn2.processor") else AttnProcessor2_0()
                             for n in unet.attn_processors})
    cases = heldout_cases(scenes, seed=seed)
    rendered = [render_scene(c.spec) for c in cases]
    pixels = torch.from_numpy(np.stack([r[0] for r in rendered])).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = tok([c.caption for c in cases], padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    timesteps = torch.full((scenes,), t)
    store.start(torch.arange(ids.shape[1]).expand(scenes, -1))
    unet(pipe.scheduler.add_noise(latents, noise, timesteps), timesteps, pipe.text_encoder(ids)[0])
    out = {}
    for name, probs in store.maps.items():
        name = name.removesuffix(".processor")
        side = int(probs.shape[1] ** 0.5)
        shares: dict[str, list[float]] = {"colour": [], "texture": [], "shape": [], "eos+pad": []}
        for i, case in enumerate(cases):
            obj = torch.from_numpy(np.any(rendered[i][1], axis=0).astype(np.float32))[None, None]
            inside = F.adaptive_avg_pool2d(obj, side).flatten() > 0.5
            if not inside.any():
                continue
            words = [w.removesuffix("</w>") for w in tok.convert_ids_to_tokens(ids[i].tolist())]
            o = case.spec.objects[0]
            for role, word in (("colour", o.colour), ("texture", o.texture), ("shape", o.shape)):
                if word in words:
                    shares[role].append(float(probs[i][inside][:, words.index(word)].mean()))
            eos = ids[i].tolist().index(tok.eos_token_id)
            shares["eos+pad"].append(float(probs[i][inside][:, eos:].sum(-1).mean()))
        out[name] = {"resolution": side} | {k: float(np.mean(v)) if v else float("nan") for k, v in shares.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--t", type=int, default=567, help="timestep of the model's own schedule (567 of v2v = SD's 600)")
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = attention_share(a.model_dir, a.t, a.scenes)
    for name, row in result.items():
        print(f"{name:60s} {row['resolution']:2d}x{row['resolution']:<2d} " +
              "  ".join(f"{k} {row[k]:.3f}" for k in ("colour", "texture", "shape", "eos+pad")))
    print(json.dumps({"model_dir": a.model_dir, "t": a.t, "scenes": a.scenes, "share": result}))


if __name__ == "__main__":
    main()
