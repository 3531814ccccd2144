"""A word-separation warm-up for the toy text encoder, before the UNet trains on it.

In every v1/v2 model the text encoder gave the six shape words nearly the same output at the shape word's
position (relative spread ~0.16, cosine 0.97) and the four textures nearly alike (cosine 0.99), while the
attributes the models drew best (background, colour) had the words kept furthest apart
(``research/word_spread.py``, ``weights/PRETRAIN_V2.md``). The UNet can only draw from the differences it
receives, so this warm-up trains the encoder alone, for a few hundred cheap steps, to make them large: cosine
classifiers (unit prototypes, scale ``SCALE``) read the object's shape, colour and texture from the output at
its shape word (the last word of its phrase, which has read the whole phrase), and the background from the
caption's end token. A cosine classifier is confident only when the outputs of different words point in clearly
different directions, which is the separation wanted; the heads are thrown away afterwards.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .world import BACKGROUND_PHRASES, COLOURS
from .worlds import World

SCALE = 16.0  # logit scale of the cosine classifiers: confident (p ~0.9) needs cosines ~0.2 apart


def _word_id(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"word {word!r} is not one token of the toy tokenizer ({ids})")
    return ids[0]


def caption_targets(world: World, specs: Sequence, captions: Sequence[str], tokenizer) -> tuple[torch.Tensor, dict]:
    """Token ids of ``captions`` and, per object, (caption index, shape-word position, shape, colour, texture
    indices); per caption that names its background, (caption index, end-token position) and the background index."""
    enc = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    shape_ids = {_word_id(tokenizer, s): s for s in world.shapes}
    colours = list(COLOURS)  # every world version shares v1's eight colours
    rows, ends, bgs = [], [], []
    for i, spec in enumerate(specs):
        ids = enc[i].tolist()
        positions = [p for p, t in enumerate(ids) if t in shape_ids]
        if len(positions) != len(spec.objects):
            raise ValueError(f"caption {captions[i]!r}: {len(positions)} shape words for {len(spec.objects)} objects "
                             "(truncated?)")
        for p, o in zip(positions, spec.objects):
            rows.append((i, p, world.shapes.index(o.shape), colours.index(o.colour), world.textures.index(o.texture)))
        if BACKGROUND_PHRASES[spec.background] in captions[i]:  # paraphrases drop it now and then: unknowable
            ends.append((i, ids.index(tokenizer.eos_token_id)))
            bgs.append(world.backgrounds.index(spec.background))
    return enc, {"objects": torch.tensor(rows), "ends": torch.tensor(ends).reshape(-1, 2), "backgrounds": torch.tensor(bgs),
                 "n_colours": len(colours)}


class CosineHeads(torch.nn.Module):
    """Unit-prototype classifiers for shape, colour, texture (at the shape word) and background (at the end)."""

    def __init__(self, dim: int, sizes: dict[str, int], generator: torch.Generator):
        super().__init__()
        self.protos = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(torch.randn(n, dim, generator=generator)) for k, n in sizes.items()})

    def logits(self, name: str, features: torch.Tensor) -> torch.Tensor:
        return SCALE * F.normalize(features, dim=-1) @ F.normalize(self.protos[name], dim=-1).T


def separation_loss(text_encoder, heads: CosineHeads, ids: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy of the four heads, and each head's accuracy."""
    states = text_encoder(ids)[0]
    obj = targets["objects"]
    at_word = states[obj[:, 0], obj[:, 1]]
    at_end = states[targets["ends"][:, 0], targets["ends"][:, 1]]
    parts = {"shape": (at_word, obj[:, 2]), "colour": (at_word, obj[:, 3]), "texture": (at_word, obj[:, 4]),
             "background": (at_end, targets["backgrounds"])}
    losses, acc = [], {}
    for name, (feats, y) in parts.items():
        logits = heads.logits(name, feats)
        losses.append(F.cross_entropy(logits, y))
        acc[name] = float((logits.argmax(-1) == y).float().mean())
    return torch.stack(losses).mean(), acc


def warm_up_text_encoder(text_encoder, tokenizer, world: World, steps: int, seed: int, batch: int = 64,
                         lr: float = 2e-4, caption_stream=None) -> dict:
    """Train ``text_encoder`` (in place) for ``steps`` steps of the separation loss on the world's captions;
    returns what the pretraining log records (loss and accuracies every 25 steps). Uses generators of its own
    (scenes ``[seed, 21]``, captions ``[seed, 22]``, heads ``seed + 23``): the run's other random streams are not
    touched, so adding the warm-up changes nothing else."""
    spec_rng, text_rng = np.random.default_rng([seed, 21]), np.random.default_rng([seed, 22])
    n_colours = len(COLOURS)
    heads = CosineHeads(text_encoder.config.hidden_size,
                        {"shape": len(world.shapes), "colour": n_colours, "texture": len(world.textures),
                         "background": len(world.backgrounds)}, torch.Generator().manual_seed(seed + 23))
    device = next(text_encoder.parameters()).device
    heads.to(device)
    opt = torch.optim.AdamW([{"params": text_encoder.parameters(), "lr": lr},
                             {"params": heads.parameters(), "lr": 1e-2}], weight_decay=0.0)
    text_encoder.train()
    log: dict = {"steps": steps, "lr": lr, "batch": batch, "history": []}
    for step in range(steps):
        specs = [world.random_spec(spec_rng) for _ in range(batch)]
        caps = [world.caption(s, text_rng) for s in specs]
        ids, targets = caption_targets(world, specs, caps, tokenizer)
        ids = ids.to(device)
        targets = {k: v.to(device) if torch.is_tensor(v) else v for k, v in targets.items()}
        loss, acc = separation_loss(text_encoder, heads, ids, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            log["history"].append({"step": step, "loss": round(loss.item(), 4), **{k: round(v, 3) for k, v in acc.items()}})
            print(f"[text warm-up] {log['history'][-1]}", flush=True)
    text_encoder.eval()
    return log
