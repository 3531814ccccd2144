"""The UNet's text conditioning as each family was trained, with the run's handles in every text encoder.

SD1.x / SD2.x: one encoder, its last hidden state. SDXL: the penultimate hidden states of CLIP-L and
OpenCLIP-G concatenated along the features, plus two extra inputs: the pooled embedding (G's final-norm state
at the end-of-text token, through its projection) and the six "time ids" (original size, crop top-left,
target size). What comes from which encoder is read from the family table (``families.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from .families import TextEncoderSpec
from .handles import Handles

if TYPE_CHECKING:
    from .components import SDComponents


def time_ids(original_size: Sequence[int], crop_top_left: Sequence[int], target_size: Sequence[int],
             batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """SDXL's micro-conditioning for a batch: (batch, 6) = original (h, w), crop (top, left), target (h, w)."""
    values = [*original_size, *crop_top_left, *target_size]
    return torch.tensor([values] * batch, dtype=torch.float32, device=device)


def end_of_text_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B,) position of the first end-of-text token of each prompt.

    Not the position of the highest token id, which is what transformers does for configs with the legacy
    ``eos_token_id=2`` (SDXL's OpenCLIP-G config among them): with handles added, the highest id is a handle.
    """
    is_end = input_ids == eos_token_id
    if not bool(is_end.any(-1).all()):
        raise ValueError("a tokenized prompt has no end-of-text token (tokenize with padding to max_length)")
    return is_end.int().argmax(-1)


def encode_text(spec: TextEncoderSpec, encoder: nn.Module, input_ids: torch.Tensor,
                eos_token_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(token states that condition the UNet, pooled projection or None) of one text encoder.

    ``eos_token_id`` (the tokenizer's) asks for the pooled output: the final-norm state at the end-of-text
    token through the encoder's ``text_projection``.
    """
    if spec.hidden_state == "last" and eos_token_id is None:
        return encoder(input_ids)[0], None
    output = encoder(input_ids, output_hidden_states=True)
    states = output.hidden_states[-2] if spec.hidden_state == "penultimate" else output.last_hidden_state
    pooled = None
    if eos_token_id is not None:
        final = output.last_hidden_state
        rows = torch.arange(final.shape[0], device=final.device)
        pooled = encoder.text_projection(final[rows, end_of_text_positions(input_ids, eos_token_id).to(final.device)])
    return states, pooled


class TextConditioning:
    """The run's handles in every text encoder of the family, and the UNet's text inputs built with them.

    Each encoder gets its own ``Handles`` (own trainable vectors, initialised from the initializer word in its
    own embedding table); the tokenizers share CLIP's vocabulary, so a handle sits at the same position in
    every encoder's tokens and one set of attention-map columns serves the whole context.
    """

    def __init__(self, components: "SDComponents", tokens: Sequence[str], initializers: Sequence[str | None]):
        self.family = components.spec
        self.encoders: list[tuple[TextEncoderSpec, nn.Module, Handles]] = [
            (spec, encoder, Handles(tokenizer, encoder, tokens, initializers))
            for spec, tokenizer, encoder in components.text_encoders()]

    # -- handles --------------------------------------------------------------------------------------
    def attach(self) -> None:
        for _, _, handles in self.encoders:
            handles.attach()

    def detach(self) -> None:
        for _, _, handles in self.encoders:
            handles.detach()

    @property
    def vectors(self) -> list[nn.Parameter]:
        """The trainable handle vectors, one tensor per encoder."""
        return [handles.vectors for _, _, handles in self.encoders]

    def handle_vectors(self) -> dict[str, torch.Tensor]:
        """{encoder name: (N, width)} CPU float copies, as packs store them."""
        return {spec.name: handles.vectors.detach().float().cpu().clone() for spec, _, handles in self.encoders}

    @property
    def tokenizer(self):
        """The first encoder's tokenizer with the handles added (for prompts shown to users)."""
        return self.encoders[0][2].tokenizer

    # -- prompts --------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str], device: torch.device | str) -> list[torch.Tensor]:
        """One (B, L) id tensor per encoder, each padded as that encoder was trained."""
        ids = []
        for _, _, handles in self.encoders:
            tokenizer = handles.tokenizer
            ids.append(tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                                 max_length=tokenizer.model_max_length).input_ids.to(device))
        return ids

    def positions(self, input_ids: list[torch.Tensor]) -> torch.Tensor:
        """(B, N) position of each handle in each prompt (-1 where absent), shared by every encoder."""
        return self.encoders[0][2].positions(input_ids[0])

    def encode(self, input_ids: list[torch.Tensor], size_ids: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """(context for the UNet's cross-attention, the UNet's ``added_cond_kwargs`` or None).

        ``size_ids`` are SDXL's time ids (``time_ids``), needed when the family has a pooled encoder.
        """
        states, pooled = [], None
        for (spec, encoder, handles), ids in zip(self.encoders, input_ids):
            wants_pooled = spec.name == self.family.pooled_encoder
            hidden, projected = encode_text(spec, encoder, ids,
                                            handles.tokenizer.eos_token_id if wants_pooled else None)
            states.append(hidden)
            pooled = projected if wants_pooled else pooled
        context = states[0] if len(states) == 1 else torch.cat(states, dim=-1)
        if self.family.pooled_encoder is None:
            return context, None
        if size_ids is None:
            raise ValueError(f"{self.family.label} conditioning needs the size time ids")
        return context, {"text_embeds": pooled, "time_ids": size_ids.to(context.device)}


def pool_at_end_of_text(encoder: nn.Module, tokenizer) -> None:
    """Make transformers pool ``encoder`` at the first end-of-text token, as the engine and ComfyUI do.

    With the legacy ``eos_token_id=2`` of SDXL's OpenCLIP-G config, transformers pools at the highest token
    id, which is a handle once handles are added. Without added tokens both rules pick the same position
    (end-of-text is the highest id of CLIP's vocabulary), so base-model outputs do not change.
    """
    text_model = getattr(encoder, "text_model", encoder)
    text_model.eos_token_id = tokenizer.eos_token_id
