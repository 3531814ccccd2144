"""Vectors as embeddings of a ComfyUI CLIP's tokenizer: ``embedding:<name>`` in a prompt becomes that vector.

ComfyUI's tokenizers (``SDTokenizer``) look an ``embedding:<name>`` word up with ``_try_get_embedding`` and put the
vector it returns into the token list, where the text encoder takes it as that position's input embedding. The
Handle Injector and the Concept Prompt Encoder install a pack's handles this way; the trainer installs stand-ins
for its handles the same way and puts its live vectors where they land.
"""
from __future__ import annotations

import copy

import torch


class HandleLookup:
    """Stands in for an SDTokenizer's ``_try_get_embedding``: the given vectors first, then ComfyUI's lookup
    (files in the embedding folders)."""

    def __init__(self, handles: dict[str, torch.Tensor], fallback):
        self.handles = handles
        self.fallback = fallback

    def __call__(self, embedding_name: str):
        words = embedding_name.split()
        if words:
            name, leftover = words[0], " ".join(words[1:])
            if name in self.handles:
                return self.handles[name], leftover
            stripped = name.strip(",")
            if stripped in self.handles:
                return self.handles[stripped], f"{name[len(stripped):]} {leftover}"
        return self.fallback(embedding_name)


def installed_handles(clip_or_tokenizer, encoder: str) -> dict[str, torch.Tensor]:
    """The vectors installed in the tokenizer of `encoder` ("clip_l", ...) of a CLIP or its tokenizer."""
    tokenizer = getattr(clip_or_tokenizer, "tokenizer", clip_or_tokenizer)
    inner = getattr(tokenizer, encoder, None)
    lookup = getattr(inner, "_try_get_embedding", None)
    return lookup.handles if isinstance(lookup, HandleLookup) else {}


def tokenizer_with_vectors(tokenizer, vectors: dict[str, dict[str, torch.Tensor]]):
    """A copy of a CLIP's tokenizer whose encoders' tokenizers know ``vectors`` ({encoder: {name: (1, dim)}}) as
    embeddings, beside those installed already; the given tokenizer is not changed."""
    tokenizer = copy.copy(tokenizer)
    for encoder, named in vectors.items():
        inner = getattr(tokenizer, encoder)
        new_inner = copy.copy(inner)
        handles = {**installed_handles(tokenizer, encoder), **named}
        fallback = type(inner)._try_get_embedding.__get__(new_inner)
        new_inner._try_get_embedding = HandleLookup(handles, fallback)
        if new_inner.embedding_directory is None:       # ComfyUI ignores 'embedding:' without a directory
            new_inner.embedding_directory = []
        setattr(tokenizer, encoder, new_inner)
    return tokenizer
