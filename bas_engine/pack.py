"""The concept pack: one .safetensors file holding everything a trained scene needs, and its exporters."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError, safe_open

from .errors import PackError
from .families import FAMILIES, family_label
from .fileio import save_safetensors_atomic

FORMAT_NAME = "break-a-scene-concept-pack"
FORMAT_VERSION = 1
#: a handle in a prompt: a token or a concept name in angle brackets, "<asset0>" or "<figurine>" (the one
#: handle syntax of the CLI, the Python API and the nodes; other text in angle brackets is left alone)
HANDLE_RE = re.compile(r"<[A-Za-z0-9_\-]+>")


@dataclass
class ConceptPack:
    """Trained handles plus phase-2 weights, and what they were trained on."""

    tokens: list[str]                        # "<asset0>", ...
    names: list[str]                         # concept names, same order
    initializers: list[str | None]
    handles: dict[str, torch.Tensor]         # text-encoder name -> (N, dim)
    mode: str                                # "lora" | "full"
    lora: dict[str, torch.Tensor] = field(default_factory=dict)    # see bas_engine.lora.lora_state_dict
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)  # "unet.<param>" -> trained - base
    meta: dict = field(default_factory=dict)  # family, prediction_type, fingerprint, settings, losses
    source: str | None = field(default=None, compare=False)   # the file it was loaded from, for messages

    def describe(self) -> str:
        """How messages name the pack: its file when it was loaded from one."""
        return f"concept pack {self.source!r}" if self.source else "concept pack"

    @property
    def family(self) -> str:
        return self.meta.get("family", "")

    def token_for(self, handle: str) -> str:
        """'<asset0>', 'asset0', '<figurine>' or 'figurine' -> the pack's token; PackError lists the known ones."""
        bare = handle.strip().strip("<>")
        for token, name in zip(self.tokens, self.names):
            if bare in (token.strip("<>"), name):
                return token
        known = ", ".join(f"{t} ({n})" for t, n in zip(self.tokens, self.names))
        raise PackError(f"unknown handle {handle!r}; this pack knows {known}", field="prompt")

    def rewrite_prompt(self, prompt: str, spell: Callable[[str], str] | None = None) -> str:
        """Write every handle of the prompt (``HANDLE_RE``) as ``spell(token)``, by default the pack's token:
        `<figurine>` -> `<asset0>`.

        A handle that is not one of this pack's is a PackError (field "prompt") listing the known ones.
        """
        spell = spell or (lambda token: token)
        return HANDLE_RE.sub(lambda m: spell(self.token_for(m.group(0))), prompt)


def save_pack(pack: ConceptPack, path: str | os.PathLike) -> None:
    """Write the pack atomically (never pickle): tensors plus JSON metadata in the safetensors header."""
    tensors = {f"handles.{enc}": vec.float() for enc, vec in pack.handles.items()}
    tensors.update({f"lora.{k}": v for k, v in pack.lora.items()})
    tensors.update({f"delta.{k}": v for k, v in pack.deltas.items()})
    header = {"tokens": pack.tokens, "names": pack.names, "initializers": pack.initializers,
              "mode": pack.mode, **pack.meta}
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "bas": json.dumps(header)}
    save_safetensors_atomic(tensors, path, metadata)


def _read(path: str, with_tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """(header, tensors) of a pack file; PackError says what is wrong (missing, truncated, other format…)."""
    if not os.path.isfile(path):
        raise PackError(f"concept pack {path!r} does not exist", field="pack")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise PackError(f"concept pack {path!r} is truncated or not a safetensors file ({exc})", field="pack") from exc
    if metadata.get("format") != FORMAT_NAME:
        raise PackError(f"{path!r} is a safetensors file but not a Break-A-Scene concept pack "
                        "(a LoRA or embedding file? load those with LoraLoader / embedding:)", field="pack")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise PackError(f"concept pack {path!r} has format version {version}; this version reads "
                        f"version {FORMAT_VERSION} — update the node pack", field="pack")
    try:
        return json.loads(metadata["bas"]), tensors
    except (KeyError, json.JSONDecodeError) as exc:
        raise PackError(f"concept pack {path!r} has damaged metadata ({exc})", field="pack") from exc


def read_pack_meta(path: str | os.PathLike) -> dict:
    """A pack's header (tokens, names, mode, fingerprints, settings, losses) without reading its tensors.

    Cheap even for full-mode packs of several GB: only the safetensors header is read.
    """
    return _read(os.fspath(path), with_tensors=False)[0]


def load_pack(path: str | os.PathLike) -> ConceptPack:
    """Read and validate a pack; PackError says what is wrong (missing, truncated, other format…)."""
    path = os.fspath(path)
    header, tensors = _read(path, with_tensors=True)
    try:
        tokens, names, initializers, mode = (header.pop(k) for k in ("tokens", "names", "initializers", "mode"))
    except KeyError as exc:
        raise PackError(f"concept pack {path!r} has damaged metadata ({exc})", field="pack") from exc
    handles = {k[len("handles."):]: v for k, v in tensors.items() if k.startswith("handles.")}
    pack = ConceptPack(tokens, names, initializers, handles, mode,
                       lora={k[5:]: v for k, v in tensors.items() if k.startswith("lora.")},
                       deltas={k[6:]: v for k, v in tensors.items() if k.startswith("delta.")},
                       meta=header, source=path)
    validate_pack(pack, path)
    return pack


def validate_pack(pack: ConceptPack, where: str = "concept pack") -> None:
    """Check the pack is self-consistent; PackError names the part that is not."""
    count = len(pack.tokens)
    if count == 0 or len(pack.names) != count or len(pack.initializers) != count:
        raise PackError(f"{where}: tokens, names and initializers disagree in number")
    if not pack.handles:
        raise PackError(f"{where}: holds no handle vectors")
    for encoder, vectors in pack.handles.items():
        if vectors.ndim != 2 or vectors.shape[0] != count:
            raise PackError(f"{where}: handles for {encoder} have shape {tuple(vectors.shape)}, "
                            f"expected ({count}, dim)")
    if pack.mode not in ("lora", "full"):
        raise PackError(f"{where}: unknown mode {pack.mode!r}")
    if pack.mode == "lora" and not pack.lora:
        raise PackError(f"{where}: a LoRA pack without LoRA weights")


def check_compatible(pack: ConceptPack, family: str, fingerprint: str | None = None, strict: bool = False,
                     encoder_widths: Mapping[str, int] | None = None) -> list[str]:
    """Refuse a pack trained on another model family or on text encoders of other widths, before any tensor
    work; with `strict`, also a pack trained on other base weights.

    ``encoder_widths`` maps the model's text-encoder names to their embedding widths. Returns warnings (other
    weights of the same family, a fine-tune, still work, as LoRAs do, but less faithfully).
    """
    where = pack.describe()
    if pack.family and pack.family != family:
        raise PackError(f"{where} was trained on an {family_label(pack.family)} model, but the model given is "
                        f"{family_label(family)}")
    for encoder, width in (encoder_widths or {}).items():
        vectors = pack.handles.get(encoder)
        if vectors is None:
            raise PackError(f"{where} holds handles for {', '.join(sorted(pack.handles))}, but the model given "
                            f"has a {encoder} text encoder")
        if vectors.shape[-1] != width:
            raise PackError(f"{where} was trained on a model whose {encoder} text encoder is {vectors.shape[-1]} "
                            f"wide, but the model given has a {width}-wide {encoder}: another model, although "
                            f"both are {family_label(family)}")
    warnings = []
    trained_on = pack.meta.get("fingerprint")
    if fingerprint and trained_on and fingerprint != trained_on:
        message = (f"{where} was trained on base weights {trained_on}, the model given is {fingerprint}; "
                   "the handles may not reproduce the concepts faithfully")
        if strict:
            raise PackError(message)
        warnings.append(message)
    return warnings


def settings_differences(stored: dict, config) -> list[str]:
    """Names of the result-changing TrainConfig settings in which a pack's stored settings differ from `config`."""
    from .config import RESULT_SETTINGS

    ours = json.loads(json.dumps(config.to_dict()))     # as the pack stores them (tuples become lists)
    return [k for k in RESULT_SETTINGS if stored.get(k) != ours.get(k)]


def pack_mismatch(meta: dict, fingerprint: str, scene_fingerprint: str, config) -> list[str]:
    """Why a saved pack is not this run's result (empty list: it is, so training can be skipped).

    `meta` is `ConceptPack.meta` or `read_pack_meta(path)`; `fingerprint` the base model's
    (`SDComponents.fingerprint()`), `scene_fingerprint` the scene's (`Scene.fingerprint()`). The one rule
    for reusing a pack, shared by `bas batch` and the ComfyUI trainer's cache.
    """
    reasons = []
    if meta.get("fingerprint") != fingerprint:
        reasons.append("other model weights")
    if meta.get("scene_fingerprint") != scene_fingerprint:
        reasons.append("another scene (image, masks, names or initializers)")
    changed = settings_differences(meta.get("settings") or {}, config)
    if changed:
        reasons.append("other settings (" + ", ".join(changed) + ")")
    return reasons


def _kohya_name(prefix: str, path: str) -> str:
    return f"{prefix}_{path.replace('.', '_')}"


def export_kohya_lora(pack: ConceptPack) -> dict[str, torch.Tensor]:
    """The pack's LoRA in kohya keys (lora_unet_…, lora_te_text_model_… ; SDXL: lora_te1_… and lora_te2_…, the
    family table's ``kohya_prefix`` of each text encoder) with the true alpha.

    ComfyUI's LoraLoader, diffusers' load_lora_weights and A1111 all read this layout.
    """
    if pack.mode != "lora":
        raise PackError("only LoRA packs export as a LoRA file; this pack was trained in full mode")
    # pack prefix of each text encoder ("text_encoder", "text_encoder_2") -> kohya prefix
    specs = FAMILIES[pack.family].text_encoders if pack.family in FAMILIES else ()
    text_prefixes = {("text_encoder" if i == 0 else f"text_encoder_{i + 1}"): spec.kohya_prefix
                     for i, spec in enumerate(specs)} or {"text_encoder": "lora_te"}
    out = {}
    for key, value in pack.lora.items():
        model, _, rest = key.partition(".")
        path, _, part = rest.rpartition(".")
        if model == "unet":
            base = _kohya_name("lora_unet", path)
        elif model in text_prefixes:
            # packs store transformers-5 names ("encoder.layers…"); kohya spells them "text_model.encoder…"
            base = _kohya_name(text_prefixes[model], "text_model." + path.removeprefix("text_model."))
        else:
            raise PackError(f"unexpected LoRA key {key!r} in pack")
        name = {"lora_down": "lora_down.weight", "lora_up": "lora_up.weight", "alpha": "alpha"}[part]
        out[f"{base}.{name}"] = value.to(torch.float16) if part != "alpha" else value.float()
    return out


def embedding_file_stem(pack_name: str, concept_name: str) -> str:
    """File stem for one exported handle, used in prompts as `embedding:<stem>`."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", f"{pack_name}_{concept_name}")


def export_embeddings(pack: ConceptPack, encoder: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{concept name: state dict}: for one text encoder a single key, the token, value (1, dim) — what both
    ComfyUI's `embedding:` loader and diffusers' load_textual_inversion read; for a family whose encoders
    have embedding keys (SDXL) one key per encoder, ``clip_l`` (1, 768) and ``clip_g`` (1, 1280), which
    ComfyUI's loader picks per encoder (diffusers: load_textual_inversion(state["clip_g"], token=…,
    text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2), and the same with clip_l).
    """
    specs = FAMILIES[pack.family].text_encoders if pack.family in FAMILIES else ()
    if encoder is None and len(specs) > 1 and all(spec.embedding_key for spec in specs):
        return {name: {spec.embedding_key: pack.handles[spec.name][i:i + 1].float().contiguous() for spec in specs}
                for i, name in enumerate(pack.names)}
    encoder = encoder or next(iter(pack.handles))
    vectors = pack.handles[encoder]
    return {name: {token: vectors[i:i + 1].float().contiguous()}
            for i, (token, name) in enumerate(zip(pack.tokens, pack.names))}


def write_exports(pack: ConceptPack, pack_name: str, lora_path: str | None,
                  embeddings_dir: str | None) -> list[str]:
    """Write the kohya LoRA and one embedding file per handle, atomically; return the paths written."""
    written = []
    if lora_path:
        save_safetensors_atomic(export_kohya_lora(pack), lora_path, {"ss_network_dim": str(pack.meta.get(
            "settings", {}).get("lora_rank", "")), "bas_tokens": json.dumps(pack.tokens)})
        written.append(lora_path)
    if embeddings_dir:
        for name, state in export_embeddings(pack).items():
            target = os.path.join(embeddings_dir, embedding_file_stem(pack_name, name) + ".safetensors")
            save_safetensors_atomic(state, target)
            written.append(target)
    return written
