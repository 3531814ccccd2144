"""SDXL in a real ComfyUI (in-process): a random-weight checkpoint ComfyUI detects as an SDXL-family model
(Segmind Vega's depths at 320 channels, full CLIP-L and OpenCLIP-G), trained by the Trainer node, and parity of
the Handle Injector / Concept Prompt Encoder with the engine (both encoders, pooled output, the patched MODEL's
noise prediction) and of the exported files with ComfyUI's stock nodes.

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_sdxl_nodes.py
"""
from __future__ import annotations

import gc
import logging
import os
from types import SimpleNamespace

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.sd  # noqa: E402

TRAIN = dict(pack_name="xl", phase1_steps=1, phase2_steps=1, phase1_lr=5e-4, phase2_lr=0.0, mode="lora",
             lora_rank=4, train_text_encoder=True, attention_loss_weight=0.01, masked_loss=True,
             union_sampling=True, resolution=64, seed=0, retrain=False)
PROMPT = "a photo of <asset0> next to <bowl>"
TE_TOL = 3e-2       # ComfyUI keeps text encoders in fp16 on the CPU
UNET_TOL = 2e-3


@pytest.fixture(scope="module")
def sdxl(checkpoint_path, comfy_dirs):
    import folder_paths

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        checkpoint_path("sdxl_vega"), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"))
    assert type(model.model.model_config).__name__ == "Segmind_Vega"       # an SDXL-family model for ComfyUI
    assert type(model.model).__name__ == "SDXL"
    yield SimpleNamespace(model=model, clip=clip, vae=vae)
    mm.unload_all_models()


@pytest.fixture(scope="module")
def scene(bas, run_node, sdxl):
    from helpers import scene_inputs

    return run_node(bas.classes["MaskedConceptLoader"], **scene_inputs()).args[0]


@pytest.fixture(scope="module")
def trained(bas, run_node, sdxl, scene, comfy_dirs):
    """The Trainer on the SDXL-family model: 1 + 1 steps at 64 px, LoRA on the UNet and both text encoders."""
    out = run_node(bas.classes["BreakASceneTrainer"], model=sdxl.model, clip=sdxl.clip, vae=sdxl.vae, scene=scene,
                   **TRAIN)
    gc.collect()
    return SimpleNamespace(out=out, path=comfy_dirs.break_a_scene / "xl.safetensors")


def test_trainer_on_an_sdxl_family_model(trained, sdxl):
    from bas_engine.fingerprint import model_fingerprint
    from bas_engine.pack import load_pack

    pack = load_pack(str(trained.path))
    assert pack.meta["family"] == "sdxl" and pack.mode == "lora"
    assert pack.handles["clip_l"].shape == (2, 768) and pack.handles["clip_g"].shape == (2, 1280)
    assert {k.split(".")[0] for k in pack.lora} == {"unet", "text_encoder", "text_encoder_2"}
    assert pack.meta["fingerprint"] == model_fingerprint(sdxl.model.model.diffusion_model.state_dict())


def test_in_place_training_equals_the_engines(bas, sdxl):
    """ComfyUI's SDXL-family model trained in place (both encoders' handles, the pooled G vector and the size
    conditioning through the model's own encode_adm, LoRA on the UNet and both encoders) gives the engine's losses,
    handles and LoRA for the same seed."""
    from helpers import assert_same_training, both_paths

    engine, engine_losses, comfy, comfy_losses = both_paths(bas, sdxl, "sdxl", "epsilon", mode="lora",
                                                            train_text_encoder=True)
    assert_same_training(engine, engine_losses, comfy, comfy_losses, weight_atol=3e-5)
    assert {k.split(".")[0] for k in comfy.lora} == {"unet", "text_encoder", "text_encoder_2"}
    assert comfy.handles["clip_l"].shape == (2, 768) and comfy.handles["clip_g"].shape == (2, 1280)


# -- parity with the engine --------------------------------------------------------------------------------------

def _engine_components(sdxl):
    from comfy_fixtures import comfy_tokenizer_dir

    from bas_engine.ldm import components_from_ldm

    mm.unload_all_models()
    state = sdxl.model.model.state_dict_for_saving(sdxl.clip.get_sd(), sdxl.vae.get_sd())
    return components_from_ldm(state, comfy_tokenizer_dir(COMFYUI_PATH),
                               unet_config=sdxl.model.model.model_config.unet_config, prediction_type="epsilon")


def _synthetic_pack(base, components):
    """The trained pack's layout with large random handles and LoRA weights (UNet and some layers of both text
    encoders), so that every part visibly changes the outputs."""
    from bas_engine.pack import ConceptPack

    g = torch.Generator().manual_seed(5)
    handles = {}
    for name, encoder in (("clip_l", components.text_encoder), ("clip_g", components.text_encoder_2)):
        std = float(encoder.get_input_embeddings().weight.float().std())
        handles[name] = torch.randn(len(base.tokens), encoder.get_input_embeddings().embedding_dim, generator=g) * std
    lora = {}
    for module in sorted({k.rsplit(".", 1)[0] for k in base.lora}):
        prefix, path = module.split(".", 1)
        if prefix != "unet" and not (".layers.0." in path or ".layers.1.self_attn.v_proj" in path):
            continue
        owner = getattr(components, prefix)
        linear = owner.get_submodule(path) if prefix == "unet" else _text_part(owner, path)
        rank = 4
        lora[f"{module}.lora_down"] = torch.randn(rank, linear.in_features, generator=g) / linear.in_features ** 0.5
        lora[f"{module}.lora_up"] = torch.randn(linear.out_features, rank, generator=g) * 0.3 / rank ** 0.5
        lora[f"{module}.alpha"] = torch.tensor(2.0)
    assert {k.split(".")[0] for k in lora} == {"unet", "text_encoder", "text_encoder_2"}
    return ConceptPack(list(base.tokens), list(base.names), list(base.initializers), handles, "lora", lora, {},
                       dict(base.meta))


def _text_part(encoder, path):
    from bas_engine.components import text_encoder_part

    return text_encoder_part(encoder, path)


@pytest.fixture(scope="module")
def synthetic(trained, sdxl, comfy_dirs):
    """A synthetic LoRA pack (saved as xl_syn.safetensors) and the engine's modules with it applied."""
    from bas_engine.generate import apply_pack
    from bas_engine.pack import load_pack, save_pack

    components = _engine_components(sdxl)
    pack = _synthetic_pack(load_pack(str(trained.path)), components)
    save_pack(pack, str(comfy_dirs.break_a_scene / "xl_syn.safetensors"))
    with torch.no_grad():
        apply_pack(components, pack)        # SDComponents names its parts as diffusers' SDXL pipeline does
    state = SimpleNamespace(pack=pack, components=components)
    yield state
    state.components = None
    gc.collect()


def _engine_text(components, prompt):
    """(context (1, 77, 2048), pooled (1, 1280)) as the engine conditions SDXL."""
    from bas_engine.conditioning import encode_text
    from bas_engine.families import SDXL

    states, pooled = [], None
    for spec, tokenizer, encoder in components.text_encoders():
        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        eos = tokenizer.eos_token_id if spec.name == SDXL.pooled_encoder else None
        with torch.no_grad():
            hidden, projected = encode_text(spec, encoder, ids, eos)
        states.append(hidden.float())
        pooled = projected.float() if projected is not None else pooled
    return torch.cat(states, -1), pooled


def _unet_inputs():
    g = torch.Generator().manual_seed(11)
    return (torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 77, 2048, generator=g),
            torch.randn(1, 1280, generator=g))


def _comfy_unet(model_patcher):
    x, t, ctx, pooled = _unet_inputs()
    y = model_patcher.model.encode_adm(pooled_output=pooled, width=64, height=64, crop_w=0, crop_h=0,
                                       target_width=64, target_height=64)
    try:
        mm.load_models_gpu([model_patcher])
        with torch.no_grad():
            dm = model_patcher.model.diffusion_model
            dtype, device = model_patcher.model.get_dtype(), mm.get_torch_device()
            return dm(x.to(device, dtype), timesteps=t.to(device), context=ctx.to(device, dtype),
                      y=y.to(device, dtype)).float().cpu()
    finally:
        mm.unload_all_models()


def _engine_unet(components):
    from bas_engine.conditioning import time_ids

    x, t, ctx, pooled = _unet_inputs()
    added = {"text_embeds": pooled, "time_ids": time_ids((64, 64), (0, 0), (64, 64), 1)}
    with torch.no_grad():
        return components.unet(x, t, ctx, added_cond_kwargs=added).sample.float()


def test_injector_and_encoder_match_engine(bas, run_node, sdxl, synthetic):
    pack, components = synthetic.pack, synthetic.components
    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name="xl_syn.safetensors").args[0]
    model, clip = run_node(bas.classes["HandleInjector"], model=sdxl.model, clip=sdxl.clip, concepts=concepts,
                           strength_model=1.0, strength_clip=1.0).args
    assert not sdxl.model.patches and not sdxl.clip.patcher.patches
    conditioning = run_node(bas.classes["ConceptPromptEncoder"], clip=clip, concepts=concepts, text=PROMPT).args[0]
    cond, extra = conditioning[0][0].float().cpu(), conditioning[0][1]
    context, pooled = _engine_text(components, pack.rewrite_prompt(PROMPT))
    assert cond.shape == (1, 77, 2048) and extra["pooled_output"].shape == (1, 1280)
    torch.testing.assert_close(cond[..., :768], context[..., :768], rtol=TE_TOL, atol=TE_TOL)    # CLIP-L
    torch.testing.assert_close(cond[..., 768:], context[..., 768:], rtol=TE_TOL, atol=TE_TOL)    # OpenCLIP-G
    torch.testing.assert_close(extra["pooled_output"].float().cpu(), pooled, rtol=TE_TOL, atol=TE_TOL)
    # ComfyUI's usual SDXL size conditioning (CLIPTextEncodeSDXL's defaults)
    assert {k: extra[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == dict(
        width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)

    patched, base = _comfy_unet(model), _comfy_unet(sdxl.model)
    torch.testing.assert_close(patched, _engine_unet(components), rtol=UNET_TOL, atol=UNET_TOL)
    assert (patched - base).abs().max() > 20 * UNET_TOL, "the pack must visibly change the UNet"
    # both encoders' handles and LoRA weights matter: the plain CLIP (handles only) gives another conditioning
    plain = run_node(bas.classes["ConceptPromptEncoder"], clip=sdxl.clip, concepts=concepts, text=PROMPT).args[0]
    assert (plain[0][0].float()[..., :768] - cond[..., :768]).abs().max() > 10 * TE_TOL
    assert (plain[0][0].float()[..., 768:] - cond[..., 768:]).abs().max() > 10 * TE_TOL
    assert (plain[0][1]["pooled_output"].float() - extra["pooled_output"].float()).abs().max() > 10 * TE_TOL


def test_injector_accepts_every_lora_module(bas, run_node, sdxl, synthetic):
    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name="xl_syn.safetensors").args[0]
    model, clip = run_node(bas.classes["HandleInjector"], model=sdxl.model, clip=sdxl.clip, concepts=concepts,
                           strength_model=1.0, strength_clip=1.0).args
    expected = len({k.rsplit(".", 1)[0] for k in synthetic.pack.lora})
    assert len(model.patches) + len(clip.patcher.patches) == expected
    assert any(k.startswith("clip_g.") for k in clip.patcher.patches)
    assert any(k.startswith("clip_l.") for k in clip.patcher.patches)


def test_exports_match_stock_nodes(bas, run_node, sdxl, synthetic, comfy_dirs, caplog):
    """Export -> stock LoraLoader (every lora_unet_/lora_te1_/lora_te2_ key loaded) + CLIPTextEncode with
    embedding:<stem> (files with clip_l and clip_g keys) give what the pack's nodes give."""
    import nodes as comfy_nodes
    from safetensors.torch import load_file

    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name="xl_syn.safetensors").args[0]
    lora_name, embedding_names = run_node(bas.classes["ConceptPackExport"], concepts=concepts, name="xxl").args
    assert embedding_names == "embedding:xxl_cat, embedding:xxl_bowl"
    assert sorted(load_file(str(comfy_dirs.embeddings / "xxl_cat.safetensors"))) == ["clip_g", "clip_l"]
    caplog.set_level(logging.WARNING)
    with torch.inference_mode():
        model, clip = comfy_nodes.LoraLoader().load_lora(sdxl.model, sdxl.clip, lora_name, 1.0, 1.0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    ours_model, ours_clip = run_node(bas.classes["HandleInjector"], model=sdxl.model, clip=sdxl.clip,
                                     concepts=concepts, strength_model=1.0, strength_clip=1.0).args
    torch.testing.assert_close(_comfy_unet(model), _comfy_unet(ours_model), rtol=1e-5, atol=1e-5)
    stock_text = PROMPT.replace("<asset0>", "embedding:xxl_cat").replace("<bowl>", "embedding:xxl_bowl")
    with torch.inference_mode():
        stock = comfy_nodes.CLIPTextEncode().encode(clip, stock_text)[0]
    ours = run_node(bas.classes["ConceptPromptEncoder"], clip=ours_clip, concepts=concepts, text=PROMPT).args[0]
    torch.testing.assert_close(ours[0][0].float(), stock[0][0].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[0][1]["pooled_output"].float(), stock[0][1]["pooled_output"].float(),
                               rtol=1e-5, atol=1e-5)


def test_pack_of_another_family_is_a_clear_error(bas, run_node, sdxl, synthetic, comfy_dirs):
    from bas_engine.pack import ConceptPack, save_pack

    pack = synthetic.pack
    sd1 = ConceptPack(pack.tokens, pack.names, pack.initializers, {"clip_l": pack.handles["clip_l"]}, "lora",
                      {k: v for k, v in pack.lora.items() if k.startswith("unet.")}, {},
                      dict(pack.meta, family="sd1"))
    save_pack(sd1, str(comfy_dirs.break_a_scene / "sd1_pack.safetensors"))
    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name="sd1_pack.safetensors").args[0]
    with pytest.raises(ValueError, match=r"^concepts: concept pack .*was trained on an SD1.x model, but the model "
                                         r"given is SDXL$"):
        run_node(bas.classes["HandleInjector"], model=sdxl.model, clip=sdxl.clip, concepts=concepts,
                 strength_model=1.0, strength_clip=1.0)
    with pytest.raises(ValueError, match=r"^concepts: the pack was trained on an SD1.x model .*this CLIP has "
                                         r"clip_l, clip_g"):
        run_node(bas.classes["ConceptPromptEncoder"], clip=sdxl.clip, concepts=concepts, text="<asset0>")
