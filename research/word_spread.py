"""How different does a toy model's text encoder make the words of one attribute?

For each attribute, captions that differ only in that attribute's word ("a large red striped {shape} on the beach"
for the six shapes, and so on) go through the text encoder; at the word's position (for the background, whose
phrases differ in length, at the caption's end token, which has read the whole caption) the spread of the outputs is
measured: the mean distance of each output from their mean over the mean output norm (0 = the words come out the
same; the UNet has only this difference to draw one word's attribute rather than another's), and their mean
pairwise cosine. Also the colour's spread at the shape word's position: how much of what sits at the shape word
is the colour before it (a causal encoder mixes earlier words into later positions).

    .venv/bin/python research/word_spread.py MODEL_DIR [MODEL_DIR ...] [--pairs]

``--pairs`` also prints, for each model, the cosine of every pair of its own world's shape words at the shape word's
position ("a large red striped {shape} on a gray background"): which shapes the encoder leaves closest together.
"""
from __future__ import annotations

import argparse
import json

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from bas_toyworld.world import BACKGROUND_PHRASES, COLOURS, SHAPES, TEXTURES

TEMPLATE = "a large {colour} {texture} {shape} {background}"
BASE = {"colour": "red", "texture": "striped", "shape": "star", "background": BACKGROUND_PHRASES["beach"]}
VALUES = {"shape": SHAPES, "colour": COLOURS, "texture": TEXTURES, "background": tuple(BACKGROUND_PHRASES.values())}
WORD_INDEX = {"colour": 3, "texture": 4, "shape": 5}  # token positions in TEMPLATE (0 is the start token)


def spread(vectors: torch.Tensor) -> dict[str, float]:
    """Relative spread (mean distance from the mean over the mean norm) and mean pairwise cosine of row vectors."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T
    off = cos[~torch.eye(len(vectors), dtype=torch.bool)]
    rel = (vectors - vectors.mean(0)).norm(dim=-1).mean() / vectors.norm(dim=-1).mean()
    return {"spread": round(float(rel), 3), "cosine": round(float(off.mean()), 3)}


@torch.no_grad()
def word_spread(model_dir: str) -> dict[str, dict[str, float]]:
    """{attribute: {"spread", "cosine"}} at the attribute's own position, plus "colour@shape"."""
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").float().eval()

    def outputs(attribute: str, position: str) -> torch.Tensor:
        texts = [TEMPLATE.format(**dict(BASE, **{attribute: v})) for v in VALUES[attribute]]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        hidden = encoder(ids).last_hidden_state
        if position == "end":
            ends = (ids == tokenizer.eos_token_id).int().argmax(dim=1)  # the first end token of each caption
            return hidden[torch.arange(len(texts)), ends]
        return hidden[:, WORD_INDEX[position]]

    out = {a: spread(outputs(a, "end" if a == "background" else a)) for a in VALUES}
    out["colour@shape"] = spread(outputs("colour", "shape"))
    return out


@torch.no_grad()
def shape_cosines(model_dir: str) -> dict[str, dict[str, float]]:
    """{shape: {shape: cosine}} of the encoder's outputs at the shape word, over the shapes of the model's world."""
    from bas_toyworld.worlds import get_world, model_world

    shapes = get_world(model_world(model_dir)).shapes
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").float().eval()
    texts = [TEMPLATE.format(**dict(BASE, shape=s, background=BACKGROUND_PHRASES["gray"])) for s in shapes]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    hidden = encoder(ids).last_hidden_state[:, WORD_INDEX["shape"]]
    unit = hidden / hidden.norm(dim=-1, keepdim=True)
    cos = (unit @ unit.T).tolist()
    return {a: {b: round(cos[i][j], 3) for j, b in enumerate(shapes)} for i, a in enumerate(shapes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--pairs", action="store_true", help="also the cosine of each pair of the world's shape words")
    a = p.parse_args()
    rows = {m: word_spread(m) for m in a.models}
    keys = list(next(iter(rows.values())))
    print(f"{'model':40s} " + " ".join(f"{k:>18s}" for k in keys))
    for m, r in rows.items():
        print(f"{m[-40:]:40s} " + " ".join(f"{r[k]['spread']:>8.3f} (cos {r[k]['cosine']:.3f})" for k in keys))
    print(json.dumps(rows))
    if a.pairs:
        for m in a.models:
            table = shape_cosines(m)
            print(f"\n{m}: cosine at the shape word\n{'':10s}" + "".join(f"{b:>10s}" for b in table))
            for row, cosines in table.items():
                print(f"{row:10s}" + "".join(f"{c:>10.3f}" for c in cosines.values()))


if __name__ == "__main__":
    main()
