"""The handles in ComfyUI's own CLIP: one trainable vector per handle per text encoder, beside its embedding table.

A handle is written into the training prompt as ``embedding:<name>``; ComfyUI's tokenizer puts a stand-in vector
there (``handle_tokens``), and before every encoding the stand-in is replaced by the handle's live vector, which
ComfyUI's text encoder takes as that position's input embedding (``SDClipModel.process_tokens``) — the way it takes
any embedding. The embedding table is never written: every other row stays bit for bit what it was. The encoders
run as the CLIP would run them for a prompt (its layer setting, its weight patches), through their own modules.

For the run, two things let gradients reach the handle vectors through ComfyUI's encoders, changed on their layers
and put back afterwards:

* ComfyUI's CLIP and T5 layers add their residuals in place (``x += attn(layer_norm1(x))``), which autograd
  refuses once the layer norm has saved ``x`` for the backward pass: each layer norm (``LayerNorm``,
  ``T5LayerNorm``) gets a pre-hook that hands it a copy of its input (tokens x width values);
* ComfyUI computes its text encoders in fp32 from weights it keeps in fp16, casting each layer's weights as it runs;
  every cast copy would stay alive until the backward pass (a whole fp32 copy of the encoder: 2.8 GB for SDXL's
  OpenCLIP-G). Each transformer layer runs under ``torch.utils.checkpoint`` instead, so one layer's copy is alive
  at a time (the encoders are about 1 % of a step's work).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...bas_engine.errors import InputError
from ...bas_engine.handles import DEFAULT_INITIALIZER
from ...bas_engine.model_adapter import PromptBatch, SizeCondition, TextHandles
from ...bas_engine.pack import HANDLE_RE
from ..handle_tokens import tokenizer_with_vectors


@dataclass(frozen=True)
class HandleSlot:
    """The place of handle ``index`` in a token list (its vector is put there at encoding)."""

    index: int


def _copy_input(module, args):
    """Forward pre-hook: the layer norm works on a copy, so the in-place residual add after it keeps autograd whole."""
    return (args[0].clone(),) + tuple(args[1:])


def _checkpointed(forward):
    """A CLIP layer's forward under torch.utils.checkpoint; the layer adds into its input in place, so it gets a
    copy (the checkpoint recomputes from the input it saved, which must stay as it was)."""
    def run(x, *args, **kwargs):
        return torch.utils.checkpoint.checkpoint(lambda x, a, k: forward(x.clone(), *a, **k), x, args, kwargs,
                                                 use_reentrant=False)
    return run


def _is_layer_norm(module: torch.nn.Module) -> bool:
    """torch's LayerNorm and ComfyUI's T5LayerNorm (an RMS norm that saves its input the same way)."""
    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def _attribute(root, path: str):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _stand_in_name(index: int) -> str:
    return f"bas_training_handle_{index}"


class ComfyText(TextHandles):
    """The run's handles in every text encoder of a ComfyUI CLIP (a clone: its tokenizer is replaced, not changed)."""

    def __init__(self, clip, family, tokens: Sequence[str], initializers: Sequence[str | None], device: torch.device):
        self.clip, self.family, self.tokens = clip, family, list(tokens)
        self.encoders = []                        # (family entry, ComfyUI's SDClipModel, trainable vectors)
        stand_ins = {}
        for spec in family.text_encoders:
            model = getattr(clip.cond_stage_model, spec.name)
            table = model.transformer.get_input_embeddings()
            tokenizer = getattr(clip.tokenizer, spec.name)
            rows = torch.stack([self._initial_vector(tokenizer, table, word) for word in initializers])
            vectors = torch.nn.Parameter(rows.to(device, torch.float32))
            self.encoders.append((spec, model, vectors))
            # distinct stand-ins, told apart by their storage when they come back in the token lists
            stand_ins[spec.name] = {_stand_in_name(i): torch.zeros(1, rows.shape[-1]) for i in range(len(self.tokens))}
        self._stand_ins = stand_ins
        self._tokenizer = tokenizer_with_vectors(clip.tokenizer, stand_ins)
        self._cache: dict[str, tuple[dict[str, list], list[int]]] = {}
        self._hooks = [module.register_forward_pre_hook(_copy_input)
                       for _, model, _ in self.encoders for module in model.modules() if _is_layer_norm(module)]
        self._checkpointed = [layer for spec, model, _ in self.encoders
                              for layer in _attribute(model, spec.comfy_layers)]
        for layer in self._checkpointed:
            layer.forward = _checkpointed(layer.forward)

    def remove_hooks(self) -> None:
        """Take the run's hooks and checkpointed forwards off ComfyUI's encoder layers."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for layer in self._checkpointed:
            layer.__dict__.pop("forward", None)
        self._checkpointed.clear()

    @staticmethod
    def _initial_vector(tokenizer, table, word: str | None) -> torch.Tensor:
        """Mean of the initializer word's token rows (several when it splits into pieces)."""
        word = word or DEFAULT_INITIALIZER
        ids = tokenizer.tokenizer(word, add_special_tokens=False)["input_ids"]
        ids = [i for i in ids if i < table.weight.shape[0]]
        if not ids:
            raise InputError(f"initializers: {word!r} does not tokenize to any known token", field="initializers")
        with torch.no_grad():
            return table.weight[ids].float().mean(0).cpu()

    # -- TextHandles ----------------------------------------------------------------------------------------------
    @property
    def vectors(self) -> list[torch.nn.Parameter]:
        return [vectors for _, _, vectors in self.encoders]

    def handle_vectors(self) -> dict[str, torch.Tensor]:
        return {spec.name: vectors.detach().float().cpu().clone() for spec, _, vectors in self.encoders}

    def tokenize(self, prompts: list[str], device: torch.device) -> PromptBatch:
        templates = {spec.name: [] for spec, _, _ in self.encoders}
        positions = []
        for prompt in prompts:
            per_encoder, where = self._tokenize_one(prompt)
            for name, template in per_encoder.items():
                templates[name].append(template)
            positions.append(where)
        return PromptBatch(torch.tensor(positions, device=device), templates)

    def _tokenize_one(self, prompt: str) -> tuple[dict[str, list], list[int]]:
        """({encoder: token list with HandleSlots}, each handle's position or -1) of one prompt (cached)."""
        if prompt in self._cache:
            return self._cache[prompt]
        text = HANDLE_RE.sub(lambda m: f" embedding:{_stand_in_name(self._handle_index(m.group(0)))} ", prompt)
        tokenized = self._tokenizer.tokenize_with_weights(text)
        # the attention columns are the handles' positions in the context encoders' tokens (all of them agree:
        # SDXL's two CLIPs; Flux's T5 alone, whose positions differ from CLIP-L's, which gives only the pooled vector)
        context = self.family.context_encoder_names
        per_encoder, where = {}, None
        for spec, _, _ in self.encoders:
            chunks = tokenized[spec.comfy_tokens]
            if len(chunks) != 1:
                raise InputError(f"class_prompt: {prompt!r} is longer than the text encoder's {len(chunks[0]) - 2} "
                                 "tokens", field="class_prompt")
            pointers = {self._stand_ins[spec.name][_stand_in_name(i)].data_ptr(): i for i in range(len(self.tokens))}
            template, found = [], [-1] * len(self.tokens)
            for position, (token, _weight) in enumerate(chunks[0]):
                if torch.is_tensor(token):
                    index = pointers[token.data_ptr()]
                    template.append(HandleSlot(index))
                    if found[index] < 0:
                        found[index] = position
                else:
                    template.append(int(token))
            per_encoder[spec.name] = template
            if spec.name in context:
                if where is not None and found != where:
                    raise RuntimeError(f"the handles sit at other positions in the {spec.name} tokens than in the "
                                       "first context encoder's")
                where = found
        self._cache[prompt] = (per_encoder, where)
        return self._cache[prompt]

    def _handle_index(self, handle: str) -> int:
        try:
            return self.tokens.index(handle)
        except ValueError:
            raise InputError(f"prompt: unknown handle {handle!r}; this run has {', '.join(self.tokens)}",
                             field="prompt") from None

    def encode(self, batch: PromptBatch, sizes: Sequence[SizeCondition]):
        """(context, pooled vector or None, sizes): the context encoders' states, combined as the family's denoiser
        takes them (features concatenated in the family's order; the pooled vector of the family's pooled encoder)."""
        states, pooled = [], None
        for spec, model, vectors in self.encoders:
            token_lists = [[vectors[t.index] if isinstance(t, HandleSlot) else t for t in template]
                           for template in batch.tokens[spec.name]]
            hidden, projected = model(token_lists)[:2]
            if spec.name in self.family.context_encoder_names:
                states.append(hidden)
            if spec.name == self.family.pooled_encoder:
                pooled = projected
        context = states[0] if len(states) == 1 else torch.cat(states, dim=-1)
        return context, pooled, list(sizes)
