"""Handles: new tokens, their initial vectors, the phase-1 freeze of every other row, handle positions."""
from __future__ import annotations

import pytest
import torch

from bas_engine.errors import InputError
from bas_engine.handles import DEFAULT_INITIALIZER, HandleEmbedding, Handles, default_tokens
from bas_engine.trainer import train

from engine_helpers import assert_same_state, small_config, state_snapshot


def _rows(tokenizer, embedding, word):
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return ids, embedding.weight[ids].detach()


def test_tokens_added_to_a_private_tokenizer(tiny):
    tokenizer, encoder = tiny.tokenizer, tiny.text_encoder
    vocab_before, size_before = tokenizer.get_vocab(), len(tokenizer)
    handles = Handles(tokenizer, encoder, default_tokens(3), [None, None, None])
    assert handles.tokens == ["<asset0>", "<asset1>", "<asset2>"]
    base_rows = encoder.get_input_embeddings().num_embeddings
    assert handles.token_ids == [base_rows, base_rows + 1, base_rows + 2]
    assert len(handles.tokenizer) == size_before + 3
    for token, token_id in zip(handles.tokens, handles.token_ids):
        assert handles.tokenizer(token, add_special_tokens=False).input_ids == [token_id]
    # the caller's tokenizer is untouched
    assert len(tokenizer) == size_before and tokenizer.get_vocab() == vocab_before
    assert handles.vectors.shape == (3, encoder.config.hidden_size)


def test_initializer_mean_of_pieces_and_default(tiny):
    tokenizer, encoder = tiny.tokenizer, tiny.text_encoder
    embedding = encoder.get_input_embeddings()
    handles = Handles(tokenizer, encoder, ["<a>", "<b>", "<c>"], ["zebra", "figurine", None])
    ids, rows = _rows(tokenizer, embedding, "zebra")
    assert len(ids) > 1                                    # the tiny vocabulary splits "zebra" into pieces
    torch.testing.assert_close(handles.vectors[0].detach(), rows.mean(0), rtol=0, atol=1e-7)
    ids, rows = _rows(tokenizer, embedding, "figurine")
    assert len(ids) == 1
    torch.testing.assert_close(handles.vectors[1].detach(), rows[0], rtol=0, atol=0)
    _, rows = _rows(tokenizer, embedding, DEFAULT_INITIALIZER)
    torch.testing.assert_close(handles.vectors[2].detach(), rows.mean(0), rtol=0, atol=1e-7)
    assert not torch.equal(handles.vectors[0], handles.vectors[1])


def test_handle_errors(tiny):
    tokenizer, encoder = tiny.tokenizer, tiny.text_encoder
    with pytest.raises(InputError, match="already a word of the tokenizer"):
        Handles(tokenizer, encoder, ["photo"], [None])
    with pytest.raises(InputError, match="must be distinct"):
        Handles(tokenizer, encoder, ["<x>", "<x>"], [None, None])
    with pytest.raises(InputError, match="2 tokens for 1 initializers"):
        Handles(tokenizer, encoder, ["<x>", "<y>"], [None])


def test_embedding_attach_detach_and_lookup(components):
    encoder = components.text_encoder
    base = encoder.get_input_embeddings()
    handles = Handles(components.tokenizer, encoder, ["<x>", "<y>"], [None, "bear"])
    handles.attach()
    assert isinstance(encoder.get_input_embeddings(), HandleEmbedding)
    ids = torch.tensor([[5, handles.token_ids[1], 7, handles.token_ids[0]]])
    out = encoder.get_input_embeddings()(ids)
    assert torch.equal(out[0, 0], base.weight[5]) and torch.equal(out[0, 2], base.weight[7])
    assert torch.equal(out[0, 1], handles.vectors[1]) and torch.equal(out[0, 3], handles.vectors[0])
    handles.detach()
    assert encoder.get_input_embeddings() is base


def test_positions(tiny):
    handles = Handles(tiny.tokenizer, tiny.text_encoder, default_tokens(3), [None] * 3)
    prompts = ["a photo of <asset2> and <asset0>", "a photo of <asset1>", "a photo of an object"]
    ids = handles.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    positions = handles.positions(ids)
    assert positions.shape == (3, 3)
    for row, prompt in enumerate(prompts):
        for n, token_id in enumerate(handles.token_ids):
            where = (ids[row] == token_id).nonzero().flatten().tolist()
            assert positions[row, n].item() == (where[0] if where else -1)
    assert positions[0].tolist()[0] > positions[0].tolist()[2] > 0 and positions[0, 1] == -1
    assert positions[2].tolist() == [-1, -1, -1]


def test_phase1_changes_only_the_handles(components, scene3, tmp_path):
    """Real phase-1 steps: the base embedding matrix, the text encoder and the UNet stay bit for bit."""
    tokenizer, encoder, unet = components.tokenizer, components.text_encoder, components.unet
    embedding = encoder.get_input_embeddings()
    matrix_before = embedding.weight.detach().clone()
    encoder_before, unet_before = state_snapshot(encoder), state_snapshot(unet)
    vocab_before, size_before = tokenizer.get_vocab(), len(tokenizer)
    initial = Handles(tokenizer, encoder, default_tokens(3), [None] * 3).vectors.detach().clone()

    pack = train(components, scene3, small_config(phase1_steps=3, phase2_steps=0, weight_decay=0.1),
                 device="cpu", cache_dir=str(tmp_path))

    assert encoder.get_input_embeddings() is embedding
    assert embedding.num_embeddings == matrix_before.shape[0]
    assert torch.equal(embedding.weight, matrix_before)
    assert embedding.weight.grad is None
    assert_same_state(encoder, encoder_before)
    assert_same_state(unet, unet_before)
    assert len(tokenizer) == size_before and tokenizer.get_vocab() == vocab_before
    # ... while the handle rows did train
    vectors = pack.handles[components.encoder_name]
    assert vectors.shape == initial.shape
    assert (vectors - initial).abs().amax(1).min() > 0
    assert pack.lora == {} and pack.deltas == {}
