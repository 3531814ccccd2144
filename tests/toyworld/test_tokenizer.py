import numpy as np
import pytest

from bas_toyworld.tokenizer import MAX_TOKENS, build_tokenizer, vocabulary_words
from bas_toyworld.world import caption, random_spec


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import CLIPTokenizer

    d = build_tokenizer(tmp_path_factory.mktemp("tok"))
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in d.iterdir()}
    return CLIPTokenizer.from_pretrained(str(d))


def test_specials(tok):
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id == tok.eos_token_id  # SD 1.x convention
    assert tok.model_max_length == MAX_TOKENS
    ids = tok("a red star", padding="max_length", max_length=tok.model_max_length).input_ids
    assert ids[0] == tok.bos_token_id and ids[4] == tok.eos_token_id and len(ids) == MAX_TOKENS


def test_every_word_is_one_token(tok):
    for w in vocabulary_words() + ["photo", "oil", "painting", "next", "to", "beach"]:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    assert tok.tokenize("A Photo of a RED star") == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "star</w>"]


def test_unknown_text_still_tokenizes_and_handles_can_be_added(tok):
    assert len(tok("zebra!! 42", add_special_tokens=False).input_ids) > 1
    tok.add_tokens(["<asset0>", "<asset1>"])
    assert tok.tokenize("a photo of <asset0> and <asset1> on the beach")[3] == "<asset0>"


def test_captions_fit(tok):
    rng = np.random.default_rng(0)
    longest = 0
    for _ in range(3000):
        spec = random_spec(rng)
        for text in (caption(spec), caption(spec, rng)):
            longest = max(longest, len(tok(text).input_ids))
    assert longest <= MAX_TOKENS
