"""The text encoder's word-separation warm-up (bas_toyworld.text_warmup): a few steps on v1's committed encoder
pull the v3 shape and texture words' outputs apart, and it touches no random stream but its own."""
from pathlib import Path

import numpy as np
import pytest
import torch

from bas_toyworld.text_warmup import caption_targets, warm_up_text_encoder
from bas_toyworld.worlds import get_world

V1 = Path(__file__).resolve().parents[2] / "bas_toyworld" / "weights" / "toy_sd"


@pytest.fixture
def encoder_and_tokenizer():
    from transformers import CLIPTextModel, CLIPTokenizer

    te = CLIPTextModel.from_pretrained(str(V1 / "text_encoder"), torch_dtype=torch.float32)
    return te, CLIPTokenizer.from_pretrained(str(V1 / "tokenizer"))


def _mean_cosine(te, tok, words: tuple[str, ...], template: str) -> float:
    """Mean pairwise cosine of the encoder's outputs at ``words`` in captions that differ in that word only."""
    caps = [template.format(w) for w in words]
    ids = tok(caps, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    pos = [ids[i].tolist().index(tok(w, add_special_tokens=False).input_ids[0]) for i, w in enumerate(words)]
    with torch.no_grad():
        h = te(ids)[0]
    v = torch.nn.functional.normalize(torch.stack([h[i, p] for i, p in enumerate(pos)]), dim=-1)
    c = v @ v.T
    return float(c[~torch.eye(len(words), dtype=torch.bool)].mean())


def test_a_few_steps_pull_the_shape_and_texture_words_apart(encoder_and_tokenizer):
    te, tok = encoder_and_tokenizer
    w = get_world("v3")
    shapes = lambda: _mean_cosine(te, tok, w.shapes, "a red {} on a white background")  # noqa: E731
    textures = lambda: _mean_cosine(te, tok, ("striped", "plain"), "a red {} square on a white background")  # noqa: E731
    before = shapes(), textures()
    assert before[0] > 0.95  # v1's encoder: the shape words nearly alike (PRETRAIN_V2.md)
    rng_before = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    log = warm_up_text_encoder(te, tok, w, 8, seed=0, batch=16, lr=1e-3)
    after = shapes(), textures()
    assert after[0] < before[0] - 0.2 and after[1] < before[1], (before, after)
    # the log: the first and the last step, and accuracies that grew
    hist = log["history"]
    assert [h["step"] for h in hist] == [0, 7] and log["steps"] == 8
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["shape"] >= hist[0]["shape"]
    # its own generators only: the global ones are where they were
    assert np.array_equal(np.random.get_state()[1], rng_before[0])
    assert torch.equal(torch.random.get_rng_state(), rng_before[1])
    assert not te.training


def test_caption_targets_find_every_object_and_name_a_mismatch(encoder_and_tokenizer):
    _, tok = encoder_and_tokenizer
    w = get_world("v3")
    rng = np.random.default_rng(0)
    specs = [w.random_spec(rng) for _ in range(20)]
    caps = [w.caption(s) for s in specs]
    ids, t = caption_targets(w, specs, caps, tok)
    assert ids.shape[0] == 20 and len(t["objects"]) == sum(len(s.objects) for s in specs)
    assert len(t["ends"]) == len(t["backgrounds"]) == 20  # canonical captions all name the background
    assert int(t["objects"][:, 2].max()) < len(w.shapes) and int(t["objects"][:, 4].max()) < len(w.textures)
    with pytest.raises(ValueError, match="shape words for"):
        caption_targets(w, specs[:1], ["a red thing on the beach"], tok)
