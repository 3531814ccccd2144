"""Exports: the kohya LoRA file and the per-handle embedding files, checked against diffusers' own loaders."""
from __future__ import annotations

import re

import pytest
import torch

from bas_engine.errors import PackError
from bas_engine.generate import apply_pack, build_pipeline
from bas_engine.lora import lora_deltas
from bas_engine.pack import ConceptPack, export_embeddings, export_kohya_lora, write_exports
from bas_engine.testing import tiny_components

KOHYA_KEY = re.compile(r"^(lora_unet_[a-z0-9_]+|lora_te_text_model_encoder_layers_\d+_self_attn_(q|k|v|out)_proj)"
                       r"\.(lora_down\.weight|lora_up\.weight|alpha)$")
PROMPT = "a photo of <asset1> and <asset0> on the beach"


def _strong_pack(pack: ConceptPack) -> ConceptPack:
    """The trained pack with LoRA weights and handles large enough to change the outputs clearly.

    Two training steps barely move the LoRA `up` matrices, so a loader that ignored them would still match;
    random values of a useful size make the comparison meaningful. Values are rounded to fp16 (what the
    kohya export stores) so both sides use the same numbers.
    """
    generator = torch.Generator().manual_seed(0)
    lora = {}
    for key, value in pack.lora.items():
        if key.endswith(".alpha"):
            lora[key] = value
        else:
            lora[key] = (torch.randn(value.shape, generator=generator) * 0.3).half().float()
    handles = {k: (torch.randn(v.shape, generator=generator)).half().float() for k, v in pack.handles.items()}
    return ConceptPack(pack.tokens, pack.names, pack.initializers, handles, pack.mode, lora, {}, dict(pack.meta))


def test_kohya_keys_and_true_alpha(trained):
    pack, config = trained
    state = export_kohya_lora(pack)
    assert all(KOHYA_KEY.match(key) for key in state), [k for k in state if not KOHYA_KEY.match(k)][:5]
    modules = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in state}
    assert any(m.startswith("lora_unet_") for m in modules) and any(m.startswith("lora_te_") for m in modules)
    assert len(state) == 3 * len(modules) == 3 * len([k for k in pack.lora if k.endswith(".lora_down")])
    for module in modules:
        down, up = state[f"{module}.lora_down.weight"], state[f"{module}.lora_up.weight"]
        assert down.shape[0] == up.shape[1] == config.lora_rank
        assert state[f"{module}.alpha"].item() == config.lora_alpha != config.lora_rank
    # every unet module name maps back onto a real Linear of the UNet
    unet_paths = {p.replace(".", "_") for p in lora_deltas(pack.lora, "unet")}
    assert {m[len("lora_unet_"):] for m in modules if m.startswith("lora_unet_")} == unet_paths


def test_kohya_text_encoder_names_for_either_transformers_layout(trained):
    """transformers 5 names the CLIP text layers `encoder.layers…`, 4.x `text_model.encoder.layers…`."""
    pack = trained[0]
    down = torch.zeros(4, 32)
    for path in ("encoder.layers.1.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.q_proj"):
        lora = {f"text_encoder.{path}.lora_down": down, f"text_encoder.{path}.lora_up": down.t().clone(),
                f"text_encoder.{path}.alpha": torch.tensor(4.0)}
        layout = ConceptPack(pack.tokens, pack.names, pack.initializers, pack.handles, "lora", lora)
        assert sorted(export_kohya_lora(layout)) == [
            "lora_te_text_model_encoder_layers_1_self_attn_q_proj." + part
            for part in ("alpha", "lora_down.weight", "lora_up.weight")]


def test_full_pack_does_not_export_as_lora(trained):
    pack = trained[0]
    full = ConceptPack(pack.tokens, pack.names, pack.initializers, pack.handles, "full")
    with pytest.raises(PackError, match="full mode"):
        export_kohya_lora(full)


def test_write_exports(trained, tmp_path):
    pack = trained[0]
    written = write_exports(pack, "my scene", str(tmp_path / "lora.safetensors"), str(tmp_path / "emb"))
    assert len(written) == 1 + len(pack.tokens)
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == [
        f"my_scene_{name}.safetensors" for name in sorted(pack.names)]
    embeddings = export_embeddings(pack)
    for i, (token, name) in enumerate(zip(pack.tokens, pack.names)):
        assert list(embeddings[name]) == [token]
        assert torch.equal(embeddings[name][token], pack.handles["clip_l"][i:i + 1])


def test_diffusers_loaders_reproduce_apply_pack(trained):
    pack = _strong_pack(trained[0])
    ours = build_pipeline(tiny_components(seed=0))
    theirs = build_pipeline(tiny_components(seed=0))
    base = build_pipeline(tiny_components(seed=0))
    assert apply_pack(ours, pack) == []

    theirs.load_lora_weights(export_kohya_lora(pack))
    for name, state in export_embeddings(pack).items():
        theirs.load_textual_inversion(state)

    def outputs(pipe, prompt):
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, 32, 32, generator=generator)
        with torch.no_grad():
            context = pipe.text_encoder(ids)[0]
            noise = pipe.unet(latents, torch.tensor([500]), context).sample
        return ids, context, noise

    ids_ours, context_ours, noise_ours = outputs(ours, PROMPT)
    ids_theirs, context_theirs, noise_theirs = outputs(theirs, PROMPT)
    assert torch.equal(ids_ours, ids_theirs)
    assert set(ours.tokenizer.convert_tokens_to_ids(pack.tokens[:2])) <= set(ids_ours[0].tolist())
    torch.testing.assert_close(context_theirs, context_ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(noise_theirs, noise_ours, rtol=1e-4, atol=1e-4)

    # the comparison has teeth: on a prompt without handles, the text-encoder LoRA changes the context, and
    # the UNet LoRA changes the prediction for the same context
    plain = "a photo of an object and an object on the beach"
    _, context_base, noise_base = outputs(base, plain)
    _, context_plain, _ = outputs(ours, plain)
    assert (context_plain - context_base).abs().max() > 0.05
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        noise_unet_lora = ours.unet(torch.randn(1, 4, 32, 32, generator=generator), torch.tensor([500]),
                                    context_base).sample
    assert (noise_unet_lora - noise_base).abs().max() > 0.05
