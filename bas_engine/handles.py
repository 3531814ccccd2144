"""Handles: one new token per concept, whose embedding row is the only text-side thing phase 1 trains."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from transformers import CLIPTokenizer

from .errors import InputError

DEFAULT_INITIALIZER = "object"


def default_tokens(count: int) -> list[str]:
    return [f"<asset{i}>" for i in range(count)]


class HandleEmbedding(nn.Module):
    """Token embedding whose handle rows come from a small trainable tensor.

    The base embedding is never resized or written to, so every other row stays bit-for-bit what it
    was, whatever the optimizer (weight decay included) does. Ids at or past the base vocabulary are
    the handles, in order.
    """

    def __init__(self, base: nn.Embedding, vectors: torch.Tensor):
        super().__init__()
        self.base = base
        self.first_id = base.num_embeddings
        self.vectors = nn.Parameter(vectors.detach().clone().to(base.weight.device, torch.float32))

    @property
    def weight(self) -> torch.Tensor:  # some callers read `.weight` for dtype/device
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_handle = input_ids >= self.first_id
        embeds = self.base(torch.where(is_handle, torch.zeros_like(input_ids), input_ids))
        handle_index = (input_ids - self.first_id).clamp(0, self.vectors.shape[0] - 1)
        handle_embeds = self.vectors.to(embeds.dtype)[handle_index]
        return torch.where(is_handle.unsqueeze(-1), handle_embeds, embeds)


class Handles:
    """The handle tokens of one training run, attached to a text encoder without modifying it.

    `attach()` swaps the encoder's token embedding for a HandleEmbedding and `detach()` puts the
    original back; the tokenizer is a private copy, so the caller's tokenizer is never changed.
    """

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: nn.Module, tokens: Sequence[str],
                 initializers: Sequence[str | None]):
        if len(tokens) != len(initializers):
            raise InputError(f"tokens: {len(tokens)} tokens for {len(initializers)} initializers", field="tokens")
        if len(set(tokens)) != len(tokens):
            raise InputError(f"tokens: handle tokens must be distinct, got {list(tokens)}", field="tokens")
        vocab = tokenizer.get_vocab()
        for token in tokens:
            # CLIP's vocabulary spells whole words with an end-of-word mark ("photo</w>").
            if any(t in vocab for t in (token, token.lower(), token.lower() + "</w>")):
                raise InputError(f"tokens: {token!r} is already a word of the tokenizer; choose another handle",
                                 field="tokens")
        self.tokens = list(tokens)
        self.text_encoder = text_encoder
        self.base_embedding: nn.Embedding = text_encoder.get_input_embeddings()
        self.tokenizer = copy.deepcopy(tokenizer)
        added = self.tokenizer.add_tokens(self.tokens)
        if added != len(self.tokens):
            raise InputError(f"tokens: could not add {self.tokens} to the tokenizer", field="tokens")
        self.token_ids = self.tokenizer.convert_tokens_to_ids(self.tokens)
        base_count = self.base_embedding.num_embeddings
        if self.token_ids != list(range(base_count, base_count + len(self.tokens))):
            raise InputError("tokens: the tokenizer's vocabulary does not match the text encoder's embedding size "
                             f"({len(tokenizer)} tokens vs {base_count} rows)", field="tokens")
        vectors = torch.stack([self.initial_vector(word) for word in initializers])
        self.embedding = HandleEmbedding(self.base_embedding, vectors)

    def initial_vector(self, word: str | None) -> torch.Tensor:
        """Mean of the initializer word's token rows (several when it splits into pieces)."""
        word = word or DEFAULT_INITIALIZER
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        ids = [i for i in ids if i < self.base_embedding.num_embeddings]
        if not ids:
            raise InputError(f"initializers: {word!r} does not tokenize to any known token", field="initializers")
        with torch.no_grad():
            return self.base_embedding.weight[ids].float().mean(0).cpu()

    @property
    def vectors(self) -> nn.Parameter:
        return self.embedding.vectors

    def attach(self) -> None:
        self.text_encoder.set_input_embeddings(self.embedding)

    def detach(self) -> None:
        self.text_encoder.set_input_embeddings(self.base_embedding)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) position of each handle in each tokenized prompt, -1 where the handle is absent."""
        ids = torch.tensor(self.token_ids, device=input_ids.device)
        match = input_ids.unsqueeze(-1) == ids                       # (B, L, N)
        found = match.any(1)
        first = match.float().argmax(1)
        return torch.where(found, first, torch.full_like(first, -1))
