"""SDXL: handles in both text encoders, pooled conditioning, time ids, attention at 1/4, LoRA/full, packs,
exports through diffusers' own loaders, and diffusers folders — on a tiny SDXL-shaped random-weight model."""
from __future__ import annotations

import pytest
import torch

from bas_engine.components import text_encoder_part
from bas_engine.conditioning import TextConditioning, end_of_text_positions, time_ids
from bas_engine.errors import PackError
from bas_engine.families import SDXL
from bas_engine.generate import apply_pack, build_pipeline, generate
from bas_engine.lora import lora_deltas
from bas_engine.models import load_model
from bas_engine.pack import ConceptPack, check_compatible, export_embeddings, export_kohya_lora, load_pack, save_pack
from bas_engine.testing import save_model, tiny_components, tiny_sdxl_components
from bas_engine.trainer import TrainingRun, train
from engine_helpers import (SHARED_SCENES, assert_same_state, make_scene, needs_shared_scenes, small_config,
                            state_snapshot)

PROMPT = "a photo of <asset1> and <asset0> on the beach"


@pytest.fixture(scope="module")
def sdxl_trained(tmp_path_factory):
    """(pack, config): SDXL LoRA pack, 2+2 steps at 64 px, LoRA on the UNet and both text encoders."""
    config = small_config(train_text_encoder=True)
    pack = train(tiny_sdxl_components(seed=0), make_scene(), config, device="cpu",
                 cache_dir=str(tmp_path_factory.mktemp("cache")))
    return pack, config


def test_family_detected_and_both_encoders_listed():
    components = tiny_sdxl_components()
    assert components.family == "sdxl" and components.spec is SDXL
    specs = [spec.name for spec, _, _ in components.text_encoders()]
    assert specs == ["clip_l", "clip_g"]
    assert components.text_encoder.config.hidden_size != components.text_encoder_2.config.hidden_size
    assert components.text_encoder_2.config.eos_token_id == 2      # SDXL's legacy config value, on purpose


def test_handles_in_both_encoders_initialised_from_their_own_tables():
    components = tiny_sdxl_components()
    text = TextConditioning(components, ["<asset0>", "<asset1>"], ["bowl", None])
    assert [spec.name for spec, _, _ in text.encoders] == ["clip_l", "clip_g"]
    for (spec, encoder, handles), width in zip(text.encoders, (32, 48)):
        assert handles.vectors.shape == (2, width)
        table = encoder.get_input_embeddings().weight
        bowl = handles.tokenizer("bowl", add_special_tokens=False).input_ids
        assert torch.equal(handles.vectors[0], table[bowl].float().mean(0))
        obj = handles.tokenizer("object", add_special_tokens=False).input_ids
        assert torch.equal(handles.vectors[1], table[obj].float().mean(0))
    # one set of attention columns serves both encoders: the handles sit at the same positions
    ids = text.tokenize([PROMPT], "cpu")
    assert torch.equal(text.encoders[0][2].positions(ids[0]), text.encoders[1][2].positions(ids[1]))
    # and each encoder pads as it was trained: CLIP-L with end-of-text, OpenCLIP-G with "!"
    assert ids[0][0, -1].item() == components.tokenizer.eos_token_id
    assert ids[1][0, -1].item() == components.tokenizer_2.convert_tokens_to_ids("!")


def test_phase1_moves_only_the_handles_of_both_encoders(tmp_path):
    components = tiny_sdxl_components()
    before = {name: state_snapshot(getattr(components, name))
              for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    initial = TextConditioning(components, ["<asset0>", "<asset1>", "<asset2>"], [None] * 3).handle_vectors()
    pack = train(components, make_scene(), small_config(phase1_steps=3, phase2_steps=0), device="cpu",
                 cache_dir=str(tmp_path))
    for name, snapshot in before.items():       # every other row of both tables, bit for bit (and all else)
        assert_same_state(getattr(components, name), snapshot)
    assert sorted(pack.handles) == ["clip_g", "clip_l"]
    for name in ("clip_l", "clip_g"):
        assert not torch.equal(pack.handles[name], initial[name]), f"{name} handles did not train"
    assert pack.meta["family"] == "sdxl" and pack.lora == {} and pack.deltas == {}


def test_context_is_both_penultimate_states_and_pooled_is_g_at_end_of_text():
    components = tiny_sdxl_components()
    text = TextConditioning(components, ["<asset0>", "<asset1>"], [None, None])
    text.attach()
    try:
        ids = text.tokenize([PROMPT, "a photo of <asset0>"], "cpu")
        size = time_ids((96, 128), (0, 0), (64, 64), 2)
        with torch.no_grad():
            context, added = text.encode(ids, size)
            out_l = components.text_encoder(ids[0], output_hidden_states=True)
            out_g = components.text_encoder_2(ids[1], output_hidden_states=True)
    finally:
        text.detach()
    assert context.shape == (2, 77, 80)
    assert torch.equal(context, torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], -1))
    eos = components.tokenizer_2.eos_token_id
    positions = end_of_text_positions(ids[1], eos)
    assert [ids[1][row, p].item() for row, p in enumerate(positions)] == [eos, eos]
    expected = components.text_encoder_2.text_projection(out_g.last_hidden_state[torch.arange(2), positions])
    assert torch.equal(added["text_embeds"], expected)
    assert torch.equal(added["time_ids"], torch.tensor([[96., 128., 0., 0., 64., 64.]] * 2))
    # the legacy eos_token_id=2 rule (highest token id) would have pooled at a handle: the projection
    # transformers returns differs, because the handles' ids are above end-of-text
    assert ids[1].argmax(-1).tolist() != positions.tolist()
    assert not torch.allclose(out_g.text_embeds, expected)


def test_time_ids_reach_the_unet_in_training(tmp_path):
    components = tiny_sdxl_components()
    seen = []
    handle = components.unet.add_time_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    scene = make_scene(size=96)                       # trained at 64 px: the original size differs from the target
    try:
        with TrainingRun(components, scene, small_config(), torch.device("cpu"), str(tmp_path)) as run:
            optimizer = run.start_phase(1)
            run.optimize(optimizer, run.sampler.draw_batch(2))
    finally:
        handle.remove()
    assert torch.equal(seen[0], torch.tensor([96., 96., 0., 0., 64., 64.] * 2))


def test_attention_capture_at_quarter_resolution_down_and_up_not_mid(tmp_path):
    components = tiny_sdxl_components()
    with TrainingRun(components, make_scene(), small_config(), torch.device("cpu"), str(tmp_path)) as run:
        layers = run.capture.layers
        assert set(layers.values()) == {4}
        assert any(n.startswith("down_blocks.2.") for n in layers) and any(n.startswith("up_blocks.0.") for n in layers)
        assert not any(n.startswith("mid_block.") for n in layers)        # the paper's blocks (see families.py)
        assert run.scene_t.attention_size == (8, 8)                       # 64 px -> latents 32 -> maps 8x8
        run.record_maps = True
        losses = run.training_step(run.sampler.draw_batch(1))
        run.capture.store.stop()
    assert {"diffusion", "attention", "loss"} <= set(losses)
    assert run._last_maps.shape == (1, 3, 8, 8)


def test_lora_pack_has_unet_and_both_text_encoders(sdxl_trained, tmp_path):
    pack, config = sdxl_trained
    assert {k.split(".")[0] for k in pack.lora} == {"unet", "text_encoder", "text_encoder_2"}
    assert pack.handles["clip_l"].shape == (3, 32) and pack.handles["clip_g"].shape == (3, 48)
    path = tmp_path / "xl.safetensors"
    save_pack(pack, path)
    loaded = load_pack(path)
    assert loaded.family == "sdxl" and sorted(loaded.handles) == ["clip_g", "clip_l"]
    assert check_compatible(loaded, "sdxl", encoder_widths={"clip_l": 32, "clip_g": 48}) == []
    with pytest.raises(PackError, match="SDXL model, but the model given is SD1.x"):
        check_compatible(loaded, "sd1")


def test_same_seed_same_pack(sdxl_trained, tmp_path):
    pack, config = sdxl_trained
    again = train(tiny_sdxl_components(seed=0), make_scene(), config, device="cpu", cache_dir=str(tmp_path))
    for name in pack.handles:
        assert torch.equal(pack.handles[name], again.handles[name])
    assert pack.lora.keys() == again.lora.keys()
    assert all(torch.equal(pack.lora[k], again.lora[k]) for k in pack.lora)


def test_full_mode_deltas_in_unet_and_both_encoders_and_model_restored(tmp_path):
    components = tiny_sdxl_components()
    before = {name: state_snapshot(getattr(components, name)) for name in ("unet", "text_encoder", "text_encoder_2")}
    pack = train(components, make_scene(), small_config(mode="full", train_text_encoder=True, phase1_steps=1,
                                                        phase2_steps=1, phase2_lr=1e-3), device="cpu",
                 cache_dir=str(tmp_path))
    assert {k.split(".")[0] for k in pack.deltas} == {"unet", "text_encoder", "text_encoder_2"}
    assert not any("token_embedding" in k for k in pack.deltas)
    for name, snapshot in before.items():
        assert_same_state(getattr(components, name), snapshot)
    # the deltas apply to a diffusers SDXL pipeline by the same names
    pipe = build_pipeline(tiny_sdxl_components())
    key = next(k for k in pack.deltas if k.startswith("text_encoder_2."))
    name = key.partition(".")[2]
    weight_before = text_encoder_part(pipe.text_encoder_2, name, parameter=True).detach().clone()
    apply_pack(pipe, pack)
    assert torch.allclose(text_encoder_part(pipe.text_encoder_2, name, parameter=True), weight_before + pack.deltas[key])


def _strong(pack: ConceptPack) -> ConceptPack:
    """Random LoRA weights and handles of a useful size (rounded to fp16, what the exports store)."""
    generator = torch.Generator().manual_seed(0)
    lora = {k: v if k.endswith(".alpha") else (torch.randn(v.shape, generator=generator) * 0.3).half().float()
            for k, v in pack.lora.items()}
    handles = {k: torch.randn(v.shape, generator=generator).half().float() for k, v in pack.handles.items()}
    return ConceptPack(pack.tokens, pack.names, pack.initializers, handles, pack.mode, lora, {}, dict(pack.meta))


def test_kohya_keys_per_encoder_and_embedding_keys(sdxl_trained):
    pack, config = sdxl_trained
    state = export_kohya_lora(pack)
    prefixes = {k.split("_text_model_")[0] if "_text_model_" in k else "lora_unet" for k in state}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    alphas = [v.item() for k, v in state.items() if k.endswith(".alpha")]
    assert set(alphas) == {config.lora_alpha}
    embeddings = export_embeddings(pack)
    for i, name in enumerate(pack.names):
        assert sorted(embeddings[name]) == ["clip_g", "clip_l"]
        assert torch.equal(embeddings[name]["clip_l"], pack.handles["clip_l"][i:i + 1])
        assert torch.equal(embeddings[name]["clip_g"], pack.handles["clip_g"][i:i + 1])


def _conditioning_and_noise(pipe, prompt: str):
    with torch.no_grad():
        context, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                   do_classifier_free_guidance=False)
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, 32, 32, generator=generator)
        added = {"text_embeds": pooled, "time_ids": time_ids((64, 64), (0, 0), (64, 64), 1)}
        noise = pipe.unet(latents, torch.tensor([500]), context, added_cond_kwargs=added).sample
    return context, pooled, noise


def test_diffusers_sdxl_loaders_reproduce_the_engine(sdxl_trained):
    """StableDiffusionXLPipeline.load_lora_weights (kohya lora_unet_/lora_te1_/lora_te2_) and load_textual_inversion
    into both encoders give the engine's conditioning (both encoders, pooled) and noise prediction."""
    pack = _strong(sdxl_trained[0])
    ours, theirs = build_pipeline(tiny_sdxl_components()), build_pipeline(tiny_sdxl_components())
    assert apply_pack(ours, pack) == []
    theirs.load_lora_weights(export_kohya_lora(pack))
    for token, (name, state) in zip(pack.tokens, export_embeddings(pack).items()):
        theirs.load_textual_inversion(state["clip_l"], token=token, text_encoder=theirs.text_encoder,
                                      tokenizer=theirs.tokenizer)
        theirs.load_textual_inversion(state["clip_g"], token=token, text_encoder=theirs.text_encoder_2,
                                      tokenizer=theirs.tokenizer_2)
    context_ours, pooled_ours, noise_ours = _conditioning_and_noise(ours, PROMPT)
    context_theirs, pooled_theirs, noise_theirs = _conditioning_and_noise(theirs, PROMPT)
    torch.testing.assert_close(context_theirs, context_ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled_theirs, pooled_ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(noise_theirs, noise_ours, rtol=1e-4, atol=1e-4)

    # and the engine's own conditioning with the pack's vectors is what the pipeline computes
    components = tiny_sdxl_components()
    text = TextConditioning(components, pack.tokens, [None] * len(pack.tokens))
    with torch.no_grad():
        for spec, _, handles in text.encoders:
            handles.vectors.copy_(pack.handles[spec.name])
    with torch.no_grad():
        for attr in ("text_encoder", "text_encoder_2"):
            encoder = getattr(components, attr)
            for path, delta in lora_deltas(pack.lora, attr).items():
                text_encoder_part(encoder, path).weight += delta
    text.attach()
    with torch.no_grad():
        context, added = text.encode(text.tokenize([PROMPT], "cpu"), time_ids((64, 64), (0, 0), (64, 64), 1))
    torch.testing.assert_close(context, context_ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(added["text_embeds"], pooled_ours, rtol=1e-4, atol=1e-4)

    # the comparison has teeth: the pack changes all three
    context_base, pooled_base, noise_base = _conditioning_and_noise(build_pipeline(tiny_sdxl_components()), PROMPT
                                                                     .replace("<asset1>", "object")
                                                                     .replace("<asset0>", "object"))
    assert (pooled_ours - pooled_base).abs().max() > 0.05
    assert (noise_ours - noise_base).abs().max() > 0.05


def test_generation_with_a_pack_on_an_sdxl_pipeline(sdxl_trained):
    pack = sdxl_trained[0]
    pipe = build_pipeline(tiny_sdxl_components())
    apply_pack(pipe, pack)
    images = generate(pipe, pack.rewrite_prompt("a photo of <asset0>"), steps=2, height=64, width=64)
    assert images[0].size == (64, 64)
    with pytest.raises(PackError, match="once per pipeline"):
        apply_pack(pipe, pack)
    with pytest.raises(PackError, match="SDXL model, but the model given is SD1.x"):
        apply_pack(build_pipeline(tiny_components()), pack)


def test_diffusers_folder_round_trip(tmp_path):
    components = tiny_sdxl_components()
    save_model(components, str(tmp_path / "xl"))
    loaded = load_model(str(tmp_path / "xl"))
    assert loaded.family == "sdxl" and loaded.tokenizer_2.pad_token == "!"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_state(getattr(loaded, name), state_snapshot(getattr(components, name)))


def test_single_file_checkpoint_round_trip_with_configs_read_from_weights(tmp_path):
    """An original SDXL single file (conditioner.embedders.0/1, label_emb) loads with the UNet, VAE and both
    text-encoder configs read from the weights, bit for bit, and writes back to the same file."""
    from safetensors.torch import save_file

    from bas_engine import ldm
    from bas_engine.testing import components_to_ldm, write_tiny_tokenizer

    components = tiny_sdxl_components()
    state = components_to_ldm(components)
    assert any(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in state)
    assert "conditioner.embedders.1.model.text_projection" in state
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    save_file(state, str(tmp_path / "xl.safetensors"))
    tokenizer_dir = write_tiny_tokenizer(str(tmp_path / "tok"))
    loaded = load_model(str(tmp_path / "xl.safetensors"), tokenizer_dir)
    assert loaded.family == "sdxl" and loaded.vae.config.scaling_factor == SDXL.vae_scaling_factor
    assert loaded.tokenizer.pad_token != "!" and loaded.tokenizer_2.pad_token == "!"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_state(getattr(loaded, name), state_snapshot(getattr(components, name)))
    assert loaded.unet.config.addition_time_embed_dim == components.unet.config.addition_time_embed_dim
    again = components_to_ldm(loaded)
    assert sorted(again) == sorted(state) and all(torch.equal(again[k], state[k]) for k in state)


def test_sdxl_unet_configs_the_distilled_variants_and_refusals():
    """The SDXL layout and ComfyUI's distilled SDXL shapes (SSD-1B, Segmind Vega, KOALA) map to diffusers configs;
    an ADM embedding on a non-SDXL model and an uneven decoder are clear errors."""
    from bas_engine.errors import ModelError
    from bas_engine.ldm import diffusers_unet_config

    base = dict(model_channels=320, use_linear_in_transformer=True, context_dim=2048, adm_in_channels=2816,
                num_res_blocks=2, num_head_channels=64)
    layouts = {"SDXL": ([1, 2, 4], [0, 0, 2, 2, 10, 10], 10), "SSD1B": ([1, 2, 4], [0, 0, 2, 2, 4, 4], 4),
               "Segmind_Vega": ([1, 2, 4], [0, 0, 1, 1, 2, 2], 2), "KOALA_700M": ([1, 2, 4], [0, 2, 5], 5)}
    for name, (mult, depth, middle) in layouts.items():
        cfg = diffusers_unet_config(dict(base, channel_mult=mult, transformer_depth=depth,
                                         transformer_depth_middle=middle,
                                         num_res_blocks=2 if len(depth) == 6 else 1), family="sdxl")
        assert cfg["addition_embed_type"] == "text_time" and cfg["addition_time_embed_dim"] == 256, name
        assert cfg["projection_class_embeddings_input_dim"] == 2816 and cfg["attention_head_dim"] == [5, 10, 20]
        assert cfg["down_block_types"][0] == "DownBlock2D" and cfg["cross_attention_dim"] == 2048
    with pytest.raises(ModelError, match="ADM"):
        diffusers_unet_config(dict(base, context_dim=1024, channel_mult=[1, 2, 4],
                                   transformer_depth=[1, 1, 1, 1, 1, 1]), family="sd2")
    with pytest.raises(ModelError, match="do not mirror"):
        diffusers_unet_config(dict(base, channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 4, 4],
                                   transformer_depth_output=[0, 0, 0, 1, 1, 1, 4, 4, 4]), family="sdxl")
    # ComfyUI's order (level 0 first) and the output-block order both pass for a mirrored decoder
    for order in ([0, 0, 0, 2, 2, 2, 10, 10, 10], [10, 10, 10, 2, 2, 2, 0, 0, 0]):
        diffusers_unet_config(dict(base, channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                                   transformer_depth_middle=10, transformer_depth_output=order), family="sdxl")


@needs_shared_scenes
def test_cli_extract_export_generate_on_a_shared_scene(tmp_path, capsys):
    """`bas extract / export / generate` end to end on an SDXL diffusers folder and a real photo."""
    import os

    from PIL import Image
    from safetensors.torch import load_file

    from bas_engine.cli import main

    model_dir = str(tmp_path / "tiny-sdxl")
    save_model(tiny_sdxl_components(), model_dir)
    scene = os.path.join(SHARED_SCENES, "creature")
    pack_path = str(tmp_path / "creature.safetensors")
    assert main(["extract", scene, "--model", model_dir, "--out", pack_path, "--names", "figurine,bowl,stone",
                 "--resolution", "64", "--phase1-steps", "2", "--phase2-steps", "2", "--train-text-encoder",
                 "--device", "cpu", "--seed", "1"]) == 0
    pack = load_pack(pack_path)
    assert pack.family == "sdxl" and sorted(pack.handles) == ["clip_g", "clip_l"]
    assert {k.split(".")[0] for k in pack.lora} == {"unet", "text_encoder", "text_encoder_2"}

    lora_path, emb_dir = str(tmp_path / "lora.safetensors"), str(tmp_path / "emb")
    assert main(["export", pack_path, "--lora", lora_path, "--embeddings", emb_dir]) == 0
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in load_file(lora_path)}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    embedding = load_file(os.path.join(emb_dir, "creature_figurine.safetensors"))
    assert sorted(embedding) == ["clip_g", "clip_l"] and embedding["clip_g"].shape == (1, 48)

    out_dir = tmp_path / "images"
    assert main(["generate", pack_path, "--model", model_dir, "--prompt", "a photo of <figurine> and <stone>",
                 "--out", str(out_dir), "--steps", "2", "--device", "cpu"]) == 0
    images = sorted(os.listdir(out_dir))
    assert len(images) == 1, images
    assert Image.open(out_dir / images[0]).size == tuple(pack.meta["training_size"][::-1])
    err = capsys.readouterr().err
    assert "warning:" not in err, err          # same base model: no fingerprint warning
