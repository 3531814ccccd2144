"""The nodes with a model, inside a real ComfyUI (in-process): training, the pack cache,
and parity of the Handle Injector / Concept Prompt Encoder with the engine and with ComfyUI's stock nodes.

Uses the random-weight SD1.5-shaped checkpoint with three UNet levels (cross-attention at 1/4 of the latent
resolution), 64 px, 2 + 2 steps; and the SD2-v fixture for the wrong-family errors.

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_nodes_training.py
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
import comfy.utils  # noqa: E402

from helpers import Hook, scene_inputs  # noqa: E402

TRAIN = dict(pack_name="scene", phase1_steps=2, phase2_steps=2, phase1_lr=5e-4, phase2_lr=0.0, mode="lora",
             lora_rank=4, train_text_encoder=False, attention_loss_weight=0.01, masked_loss=True,
             union_sampling=True, resolution=64, seed=0, retrain=False)
PROMPT = "a photo of <asset0> next to <bowl>"
TE_TOL = 3e-2       # ComfyUI keeps text encoders in fp16 on the CPU
UNET_TOL = 2e-3


@pytest.fixture
def hook():
    h = Hook()
    comfy.utils.set_progress_bar_global_hook(h)
    yield h
    comfy.utils.set_progress_bar_global_hook(None)
    mm.interrupt_current_processing(False)


@pytest.fixture(scope="module")
def sd15(checkpoint_path, comfy_dirs):
    import folder_paths

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        checkpoint_path("sd15l3"), output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"))
    assert type(model.model.model_config).__name__ == "SD15"
    yield SimpleNamespace(model=model, clip=clip, vae=vae)
    mm.unload_all_models()


@pytest.fixture(scope="module")
def scene(bas, run_node, sd15):
    return run_node(bas.classes["MaskedConceptLoader"], **scene_inputs()).args[0]


@pytest.fixture(scope="module")
def trained(bas, run_node, sd15, scene, comfy_dirs):
    """The Trainer run once (2 + 2 steps, LoRA rank 4, 64 px) with a recording progress hook."""
    h = Hook()
    comfy.utils.set_progress_bar_global_hook(h)
    try:
        out = run_node(bas.classes["BreakASceneTrainer"], unique_id="7", model=sd15.model, clip=sd15.clip, vae=sd15.vae,
                       scene=scene, **TRAIN)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    return SimpleNamespace(out=out, calls=h.calls, path=comfy_dirs.break_a_scene / "scene.safetensors")


def _pack_files(comfy_dirs):
    return sorted(os.listdir(comfy_dirs.break_a_scene))


# -- training, cache, cancel ---------------------------------------------------------------------------------------

def test_trainer_trains_and_saves(bas, trained, sd15, comfy_dirs):
    from bas_engine.fingerprint import model_fingerprint
    from bas_engine.pack import load_pack

    concepts, preview = trained.out.args
    assert trained.path.is_file()
    assert not [f for f in _pack_files(comfy_dirs) if f.startswith(".tmp")], "atomic save leaves no temp file"
    pack = load_pack(str(trained.path))
    assert pack.tokens == ["<asset0>", "<asset1>"] and pack.names == ["cat", "bowl"] and pack.mode == "lora"
    assert pack.meta["family"] == "sd1" and pack.meta["settings"]["resolution"] == 64
    assert pack.meta["fingerprint"] == model_fingerprint(sd15.model.model.diffusion_model.state_dict())
    assert concepts.name == "scene" and concepts.pack.tokens == pack.tokens
    torch.testing.assert_close(concepts.pack.handles["clip_l"], pack.handles["clip_l"])
    # progress: 4 steps on node 7, with attention previews (JPEG, PIL image, max size)
    steps = [c for c in trained.calls if c.preview is None]
    assert [c.value for c in steps] == [1, 2, 3, 4] and {c.total for c in trained.calls} == {4}
    assert {c.node_id for c in trained.calls} == {"7"}
    previews = [c.preview for c in trained.calls if c.preview is not None]
    assert previews and previews[-1][0] == "JPEG" and previews[-1][2] == 512
    assert previews[-1][1].size == (2 * 192, 192)          # one tile per handle
    assert preview.ndim == 4 and preview.shape[0] == 1 and preview.shape[-1] == 3
    assert "trained 2+2 steps" in trained.out.ui["bas_summary"][0]


def test_trainer_loads_from_cache(bas, run_node, trained, sd15, scene, hook):
    mtime = trained.path.stat().st_mtime_ns
    out = run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene, **TRAIN)
    assert hook.calls == [], "a cache hit must not train"
    assert out.ui["bas_summary"][0].startswith("loaded scene.safetensors")
    assert trained.path.stat().st_mtime_ns == mtime
    torch.testing.assert_close(out.args[0].pack.handles["clip_l"], trained.out.args[0].pack.handles["clip_l"])


def test_trainer_refuses_to_overwrite_other_pack(bas, run_node, trained, sd15, scene, hook):
    mtime = trained.path.stat().st_mtime_ns
    trainer = bas.classes["BreakASceneTrainer"]
    with pytest.raises(ValueError, match=r"^pack_name: .*scene\.safetensors already exists and was trained with "
                                         r"other settings \(seed\)\. .*retrain"):
        run_node(trainer, model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene, **{**TRAIN, "seed": 1})
    other_scene = run_node(bas.classes["MaskedConceptLoader"], **scene_inputs("dog, bowl")).args[0]
    with pytest.raises(ValueError, match=r"another scene"):
        run_node(trainer, model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=other_scene, **TRAIN)
    assert hook.calls == [] and trained.path.stat().st_mtime_ns == mtime


def test_trainer_refuses_corrupt_existing_file(bas, run_node, sd15, scene, hook, comfy_dirs):
    target = comfy_dirs.break_a_scene / "broken.safetensors"
    target.write_bytes(b"not a pack")
    try:
        with pytest.raises(ValueError, match=r"^pack_name: .*broken\.safetensors exists but is not a usable concept "
                                             r"pack .*retrain"):
            run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
                     **{**TRAIN, "pack_name": "broken"})
        assert hook.calls == [] and target.read_bytes() == b"not a pack"
    finally:
        target.unlink()


def test_trainer_retrain_overwrites(bas, run_node, trained, sd15, scene, hook):
    from bas_engine.pack import load_pack

    mtime = trained.path.stat().st_mtime_ns
    out = run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
                   **{**TRAIN, "seed": 1, "retrain": True})
    assert [c.value for c in hook.calls if c.preview is None] == [1, 2, 3, 4]
    assert trained.path.stat().st_mtime_ns != mtime
    assert load_pack(str(trained.path)).meta["settings"]["seed"] == 1
    assert out.args[0].pack.meta["settings"]["seed"] == 1


# -- parity with the engine ------------------------------------------------------------------------------------------

def _engine_components(sd15):
    from comfy_fixtures import comfy_tokenizer_dir

    from bas_engine.ldm import components_from_ldm

    mm.unload_all_models()
    state = sd15.model.model.state_dict_for_saving(sd15.clip.get_sd(), sd15.vae.get_sd())
    return components_from_ldm(state, comfy_tokenizer_dir(COMFYUI_PATH),
                               unet_config=sd15.model.model.model_config.unet_config, prediction_type="epsilon")


def _synthetic_pack(base, components, mode: str):
    """The trained pack's layout with large random weights, so that every part visibly changes the outputs."""
    from bas_engine.lora import TEXT_ENCODER_TARGETS
    from bas_engine.pack import ConceptPack

    g = torch.Generator().manual_seed(5)
    std = float(components.text_encoder.get_input_embeddings().weight.float().std())
    handles = {"clip_l": torch.randn(len(base.tokens), 768, generator=g) * std}
    lora, deltas = {}, {}
    if mode == "lora":
        modules = {k.rsplit(".", 1)[0] for k in base.lora}
        te = [p for p, _ in components.text_encoder.named_modules()
              if TEXT_ENCODER_TARGETS.match(p) and (".layers.0." in p or p.endswith(".layers.1.self_attn.v_proj"))]
        modules |= {f"text_encoder.{p}" for p in te}
        for module in sorted(modules):
            owner = components.unet if module.startswith("unet.") else components.text_encoder
            linear = owner.get_submodule(module.split(".", 1)[1])
            rank = 4
            lora[f"{module}.lora_down"] = torch.randn(rank, linear.in_features, generator=g) / linear.in_features ** 0.5
            lora[f"{module}.lora_up"] = torch.randn(linear.out_features, rank, generator=g) * 0.3 / rank ** 0.5
            lora[f"{module}.alpha"] = torch.tensor(2.0)
    else:
        for prefix, module, pattern in (("unet", components.unet, ("attn2.to_k.weight", "conv_in.weight",
                                                                    "time_embedding.linear_1.bias")),
                                        ("text_encoder", components.text_encoder,
                                         ("layers.0.self_attn.q_proj.weight", "layers.1.mlp.fc1.weight",
                                          "final_layer_norm.weight"))):
            for name, p in module.named_parameters():
                if name.endswith(pattern):
                    fan_in = p[0].numel() if p.ndim > 1 else 1
                    deltas[f"{prefix}.{name}"] = torch.randn(p.shape, generator=g) * 0.3 / fan_in ** 0.5
    assert deltas or lora
    return ConceptPack(list(base.tokens), list(base.names), list(base.initializers), handles, mode, lora, deltas,
                       dict(base.meta))


@pytest.fixture(scope="module")
def synthetic(trained, sd15, comfy_dirs):
    """Synthetic LoRA and full packs (saved as lora_syn / full_syn.safetensors) and, per mode, the engine's
    modules with that pack applied (``synthetic.engine(mode)``; one set in memory at a time)."""
    from bas_engine.generate import apply_pack
    from bas_engine.pack import load_pack, save_pack

    base = load_pack(str(trained.path))
    state = SimpleNamespace(components=_engine_components(sd15), applied=None)
    state.packs = {mode: _synthetic_pack(base, state.components, mode) for mode in ("lora", "full")}
    for mode, pack in state.packs.items():
        save_pack(pack, str(comfy_dirs.break_a_scene / f"{mode}_syn.safetensors"))

    def engine(mode):
        if state.applied != mode:
            if state.applied is not None:             # apply_pack merges in place: start from fresh modules
                state.components = None
                gc.collect()
                state.components = _engine_components(sd15)
            with torch.no_grad():
                apply_pack(state.components, state.packs[mode])
            state.applied = mode
        return state.packs[mode], state.components

    state.engine = engine
    yield state
    state.components = None
    gc.collect()


def _unet_inputs():
    g = torch.Generator().manual_seed(11)
    return torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 77, 768, generator=g)


def _comfy_unet(model_patcher):
    x, t, ctx = _unet_inputs()
    try:
        mm.load_models_gpu([model_patcher])
        with torch.no_grad():
            dm = model_patcher.model.diffusion_model
            dtype, device = model_patcher.model.get_dtype(), mm.get_torch_device()
            return dm(x.to(device, dtype), timesteps=t.to(device), context=ctx.to(device, dtype)).float().cpu()
    finally:
        mm.unload_all_models()


def _engine_unet(components):
    x, t, ctx = _unet_inputs()
    with torch.no_grad():
        return components.unet(x, t, ctx).sample.float()


def _engine_text(components, prompt):
    ids = components.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                               return_tensors="pt").input_ids
    with torch.no_grad():
        return components.text_encoder(ids)[0].float()


def _cond(conditioning):
    return conditioning[0][0].float().cpu()


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_injector_and_encoder_match_engine(bas, run_node, sd15, synthetic, mode):
    pack, components = synthetic.engine(mode)
    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name=f"{mode}_syn.safetensors").args[0]
    assert concepts.name == f"{mode}_syn" and concepts.pack.mode == mode
    model, clip = run_node(bas.classes["HandleInjector"], model=sd15.model, clip=sd15.clip, concepts=concepts,
                           strength_model=1.0, strength_clip=1.0).args
    assert model is not sd15.model and clip is not sd15.clip
    assert clip.tokenizer is not sd15.clip.tokenizer and not sd15.model.patches and not sd15.clip.patcher.patches
    conditioning = run_node(bas.classes["ConceptPromptEncoder"], clip=clip, concepts=concepts, text=PROMPT,
                            guidance=2.0).args[0]
    assert "guidance" not in conditioning[0][1], "SD1.x has no guidance input: the value is not put on it"
    cond = _cond(conditioning)
    engine_prompt = pack.rewrite_prompt(PROMPT)
    torch.testing.assert_close(cond, _engine_text(components, engine_prompt), rtol=TE_TOL, atol=TE_TOL)

    patched, base = _comfy_unet(model), _comfy_unet(sd15.model)
    torch.testing.assert_close(patched, _engine_unet(components), rtol=UNET_TOL, atol=UNET_TOL)
    assert (patched - base).abs().max() > 20 * UNET_TOL, "the pack must visibly change the UNet"
    # the text-encoder weights matter too: the plain CLIP with the handles only gives another conditioning
    plain = _cond(run_node(bas.classes["ConceptPromptEncoder"], clip=sd15.clip, concepts=concepts,
                           text=PROMPT).args[0])
    assert (plain - cond).abs().max() > 10 * TE_TOL


def test_injector_accepts_engine_key_maps(bas, run_node, sd15, synthetic):
    """Every LoRA module / delta of the pack became a ComfyUI patch (nothing dropped silently)."""
    for mode, pack in synthetic.packs.items():
        concepts = run_node(bas.classes["ConceptPackLoader"], pack_name=f"{mode}_syn.safetensors").args[0]
        model, clip = run_node(bas.classes["HandleInjector"], model=sd15.model, clip=sd15.clip,
                               concepts=concepts, strength_model=1.0, strength_clip=1.0).args
        if mode == "lora":
            expected = len({k.rsplit(".", 1)[0] for k in pack.lora})
        else:
            expected = len(pack.deltas)
        assert len(model.patches) + len(clip.patcher.patches) == expected


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_exports_match_stock_nodes(bas, run_node, sd15, synthetic, comfy_dirs, caplog, mode):
    """Export -> stock LoraLoader + CLIPTextEncode with embedding:<stem> gives what the pack's nodes give."""
    import nodes as comfy_nodes

    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name=f"{mode}_syn.safetensors").args[0]
    export = bas.classes["ConceptPackExport"]
    out = run_node(export, concepts=concepts, name=f"x{mode}")
    lora_name, embedding_names = out.args
    assert embedding_names == f"embedding:x{mode}_cat, embedding:x{mode}_bowl"
    for stem in ("cat", "bowl"):
        assert (comfy_dirs.embeddings / f"x{mode}_{stem}.safetensors").is_file()
    assert run_node(export, concepts=concepts, name=f"x{mode}").args == out.args, "identical files: no error"

    stock_text = PROMPT.replace("<asset0>", f"embedding:x{mode}_cat").replace("<bowl>", f"embedding:x{mode}_bowl")
    if mode == "lora":
        assert lora_name == "xlora.safetensors" and (comfy_dirs.loras / lora_name).is_file()
        caplog.set_level(logging.WARNING)
        with torch.inference_mode():
            model, clip = comfy_nodes.LoraLoader().load_lora(sd15.model, sd15.clip, lora_name, 1.0, 1.0)
        assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
        ours_model, ours_clip = run_node(bas.classes["HandleInjector"], model=sd15.model, clip=sd15.clip,
                                         concepts=concepts, strength_model=1.0, strength_clip=1.0).args
        torch.testing.assert_close(_comfy_unet(model), _comfy_unet(ours_model), rtol=1e-5, atol=1e-5)
    else:
        assert lora_name == "" and not (comfy_dirs.loras / "xfull.safetensors").exists()
        clip, ours_clip = sd15.clip, sd15.clip          # the handles alone, on the plain CLIP
    with torch.inference_mode():
        stock = _cond(comfy_nodes.CLIPTextEncode().encode(clip, stock_text)[0])
    ours = _cond(run_node(bas.classes["ConceptPromptEncoder"], clip=ours_clip, concepts=concepts,
                          text=PROMPT).args[0])
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_export_refuses_other_file(bas, run_node, trained, comfy_dirs):
    concepts = trained.out.args[0]
    target = comfy_dirs.embeddings / "taken_cat.safetensors"
    target.write_bytes(b"something else")
    with pytest.raises(ValueError, match=r"^name: .*taken_cat\.safetensors already exists and holds other weights"):
        run_node(bas.classes["ConceptPackExport"], concepts=concepts, name="taken")
    assert not (comfy_dirs.loras / "taken.safetensors").exists(), "nothing is written when one file conflicts"
    assert target.read_bytes() == b"something else"


def test_weighted_handle(bas, run_node, sd15, synthetic):
    """(<asset0>:1.2) is weighted like any ComfyUI word: equal to (embedding:<stem>:1.2), unlike <asset0>."""
    import nodes as comfy_nodes

    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name="lora_syn.safetensors").args[0]
    run_node(bas.classes["ConceptPackExport"], concepts=concepts, name="xlora")
    encoder = bas.classes["ConceptPromptEncoder"]
    weighted = _cond(run_node(encoder, clip=sd15.clip, concepts=concepts, text="a photo of (<asset0>:1.2)").args[0])
    plain = _cond(run_node(encoder, clip=sd15.clip, concepts=concepts, text="a photo of <asset0>").args[0])
    with torch.inference_mode():
        stock = _cond(comfy_nodes.CLIPTextEncode().encode(sd15.clip, "a photo of (embedding:xlora_cat:1.2)")[0])
    assert (weighted - plain).abs().max() > 1e-3
    torch.testing.assert_close(weighted, stock, rtol=1e-5, atol=1e-5)


def test_unknown_handle_lists_known(bas, run_node, sd15, trained):
    with pytest.raises(ValueError, match=r"^text: unknown handle '<dog>'; this pack knows <asset0> \(cat\), "
                                         r"<asset1> \(bowl\)"):
        run_node(bas.classes["ConceptPromptEncoder"], clip=sd15.clip, concepts=trained.out.args[0],
                 text="a <dog> and <cat>")


# -- wrong family ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd2(checkpoint_path, synthetic):
    synthetic.components = None             # the SD1 engine modules are no longer needed
    gc.collect()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint_path("sd20v"), output_vae=True,
                                                                output_clip=True, embedding_directory=None)
    assert type(model.model.model_config).__name__ == "SD20"
    yield SimpleNamespace(model=model, clip=clip, vae=vae)
    mm.unload_all_models()


def test_sd2_v_lora_pack_matches_engine(bas, run_node, sd2, comfy_dirs):
    """SD2 (OpenCLIP-H, v-prediction): clip_h handles, kohya LoRA on the UNet and the text encoder."""
    from comfy_fixtures import comfy_tokenizer_dir

    from bas_engine.generate import apply_pack
    from bas_engine.ldm import components_from_ldm
    from bas_engine.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS
    from bas_engine.pack import ConceptPack, save_pack

    mm.unload_all_models()
    state = sd2.model.model.state_dict_for_saving(sd2.clip.get_sd(), sd2.vae.get_sd())
    components = components_from_ldm(state, comfy_tokenizer_dir(COMFYUI_PATH),
                                     unet_config=sd2.model.model.model_config.unet_config,
                                     prediction_type="v_prediction")
    del state
    g = torch.Generator().manual_seed(7)
    std = float(components.text_encoder.get_input_embeddings().weight.float().std())
    lora = {}
    for prefix, module, pattern in (("unet", components.unet, UNET_TARGETS),
                                    ("text_encoder", components.text_encoder, TEXT_ENCODER_TARGETS)):
        paths = [p for p, _ in module.named_modules() if pattern.match(p)]
        paths = [p for p in paths if "attn2.to_k" in p or "attn2.to_v" in p or ".layers.0." in p or ".layers.5." in p]
        for path in paths:
            linear = module.get_submodule(path)
            lora[f"{prefix}.{path}.lora_down"] = torch.randn(4, linear.in_features, generator=g) / linear.in_features ** 0.5
            lora[f"{prefix}.{path}.lora_up"] = torch.randn(linear.out_features, 4, generator=g) * 0.3
            lora[f"{prefix}.{path}.alpha"] = torch.tensor(4.0)
    pack = ConceptPack(["<asset0>", "<asset1>"], ["cat", "bowl"], [None, None],
                       {"clip_h": torch.randn(2, 1024, generator=g) * std}, "lora", lora,
                       meta={"family": "sd2", "prediction_type": "v_prediction", "encoder": "clip_h"})
    save_pack(pack, str(comfy_dirs.break_a_scene / "sd2_syn.safetensors"))
    with torch.no_grad():
        apply_pack(components, pack)

    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name="sd2_syn.safetensors").args[0]
    model, clip = run_node(bas.classes["HandleInjector"], model=sd2.model, clip=sd2.clip, concepts=concepts,
                           strength_model=1.0, strength_clip=1.0).args
    cond = _cond(run_node(bas.classes["ConceptPromptEncoder"], clip=clip, concepts=concepts,
                          text=PROMPT).args[0])
    torch.testing.assert_close(cond, _engine_text(components, pack.rewrite_prompt(PROMPT)), rtol=TE_TOL, atol=TE_TOL)
    x, t, _ = _unet_inputs()
    ctx = torch.randn(1, 77, 1024, generator=g)
    try:
        mm.load_models_gpu([model])
        with torch.no_grad():
            dtype, device = model.model.get_dtype(), mm.get_torch_device()
            ref = model.model.diffusion_model(x.to(device, dtype), timesteps=t.to(device),
                                              context=ctx.to(device, dtype)).float().cpu()
    finally:
        mm.unload_all_models()
    with torch.no_grad():
        ours = components.unet(x, t, ctx).sample.float()
        base = sd2.model.model.diffusion_model(x, timesteps=t, context=ctx).float()
    torch.testing.assert_close(ref, ours, rtol=UNET_TOL, atol=UNET_TOL)
    assert (ref - base).abs().max() > 20 * UNET_TOL


def test_sd1_pack_on_sd2_model(bas, run_node, sd2, trained, sd15, scene):
    concepts = trained.out.args[0]
    with pytest.raises(ValueError, match=r"^concepts: concept pack .*was trained on an SD1.x model, but the model given "
                                         r"is SD2.x$"):
        run_node(bas.classes["HandleInjector"], model=sd2.model, clip=sd2.clip, concepts=concepts,
                 strength_model=1.0, strength_clip=1.0)
    with pytest.raises(ValueError, match=r"^concepts: the pack was trained on an SD1.x model .*this CLIP has clip_h"):
        run_node(bas.classes["ConceptPromptEncoder"], clip=sd2.clip, concepts=concepts, text="<asset0>")
    with pytest.raises(ValueError, match=r"^clip: this CLIP has a clip_h text encoder, but the SD1\.x model needs "
                                         r"clip_l"):
        run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd2.clip, vae=sd15.vae, scene=scene, **TRAIN)
