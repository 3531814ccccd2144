"""Break-A-Scene on Flux inside the real ComfyUI (in-process): a random-weight Flux-shaped transformer that ComfyUI's
own detection reads as Flux, ComfyUI's FluxClipModel with small CLIP-L / T5 configs and Flux's VAE
(``flux_models.py``), trained in place by the Trainer node. Select with ``-k flux``.

    COMFYUI_PATH=/work/shared/comfyui .cache/comfyui-venv/bin/python -m pytest -q tests/comfy/test_flux_train.py
"""
from __future__ import annotations

import gc
import os

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402

from comfy_fixtures import CACHE  # noqa: E402
from flux_models import CLIP_L_CONFIG, load_flux, save_flux_checkpoint, save_flux_files  # noqa: E402
from helpers import scene_inputs  # noqa: E402

TRAIN = dict(pack_name="flux_inplace", phase1_steps=2, phase2_steps=2, phase1_lr=5e-4, phase2_lr=0.0, mode="lora",
             lora_rank=4, train_text_encoder=False, attention_loss_weight=0.01, masked_loss=True,
             union_sampling=True, resolution=64, seed=0, retrain=True)


@pytest.fixture(scope="module")
def flux(comfy_dirs):
    from types import SimpleNamespace

    paths = save_flux_files(os.path.join(CACHE, "flux-v1"))
    model, clip, vae = load_flux(paths)
    yield SimpleNamespace(model=model, clip=clip, vae=vae, paths=paths)
    mm.unload_all_models()
    gc.collect()


@pytest.fixture(scope="module")
def scene(bas, run_node, flux):
    return run_node(bas.classes["MaskedConceptLoader"], **scene_inputs()).args[0]


def _tables(clip) -> dict[str, torch.Tensor]:
    stage = clip.cond_stage_model
    return {"t5xxl": stage.t5xxl.transformer.get_input_embeddings().weight.detach().clone(),
            "clip_l": stage.clip_l.transformer.get_input_embeddings().weight.detach().clone()}


def test_flux_is_detected_as_the_flux_family(bas, flux):
    common = bas.module("nodes.common")
    assert type(flux.model.model.model_config).__name__ == "Flux"
    assert common.model_family(flux.model) == "flux"
    assert common.prediction_type(flux.model) == "flow"
    assert common.check_clip(flux.clip, "flux") == ["t5xxl", "clip_l"]


@pytest.fixture(scope="module")
def trained(bas, run_node, flux, scene):
    """The Trainer node's run at tiny settings: (concepts, the encoders' tables and the transformer's weights
    before it)."""
    tables = _tables(flux.clip)
    state = {k: v.clone() for k, v in flux.model.model.diffusion_model.state_dict().items()}
    concepts = run_node(bas.classes["BreakASceneTrainer"], model=flux.model, clip=flux.clip, vae=flux.vae,
                        scene=scene, **TRAIN).args[0]
    return concepts, tables, state


def test_flux_trains_both_phases_in_place(flux, trained):
    concepts, tables, state = trained
    pack = concepts.pack
    assert pack.family == "flux" and pack.meta["prediction_type"] == "flow"
    assert pack.handles["t5xxl"].shape == (2, 4096) and pack.handles["clip_l"].shape == (2, 64)
    # the maps sit on the patch grid: 64 px -> 8x8 latent -> 4x4 patches
    assert pack.meta["attention_downscale"] == 2
    losses = pack.meta["losses"]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert {"phase1_attention", "phase2_attention", "phase1_diffusion", "phase2_diffusion"} <= losses.keys()
    blocks = {k.split(".")[1] for k in pack.lora}
    assert blocks == {"double_blocks", "single_blocks"}, blocks
    layers = {k.rsplit(".", 1)[0] for k in pack.lora}
    assert layers == {f"unet.double_blocks.0.{s}_{p}" for s in ("img", "txt")
                      for p in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")} \
        | {"unet.single_blocks.0.linear1", "unet.single_blocks.0.linear2"}
    ups = [v for k, v in pack.lora.items() if k.endswith(".lora_up")]
    assert all(torch.count_nonzero(up) for up in ups), "phase 2 trained every adapter"
    # handles moved from their initial rows; the tables of both encoders and the transformer are bit for bit as before
    for name, table in _tables(flux.clip).items():
        assert torch.equal(table, tables[name]), name
    for key, value in flux.model.model.diffusion_model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not flux.model.model_options.get("transformer_options"), "the MODEL that flowed in got the run's patches"


def test_flux_attention_maps_match_a_naive_reference(bas, flux):
    """The recorded maps (image queries' softmax over text + image keys at the handle columns, head mean) equal a
    naive full-probability computation in the same forward pass, in value and in gradient."""
    flux_parts = bas.module("nodes.comfy_model.flux")
    store_cls = bas.module("bas_engine.attention").AttentionStore
    with torch.inference_mode(False):
        patcher = flux.model.clone()
        hooks = flux_parts.FluxAttentionHooks(patcher, ("double",))
        hooks.install()
        guards = flux_parts.FluxParts(patcher).guard_in_place()        # as the adapter's prepare() installs them
        model = patcher.model
        model.diffusion_model.requires_grad_(False)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, 8, 8, generator=g)
        context = torch.randn(1, 12, 4096, generator=g, requires_grad=True)
        pooled = torch.randn(1, 64, generator=g)
        columns = torch.tensor([[3, 7]])
        reference = {}

        def naive(function, q, k, v, heads, *args, **kwargs):
            options = kwargs.get("transformer_options") or {}
            probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).float().softmax(-1)
            mark = options.get(flux_parts.CAPTURE_KEY)
            if mark is not None:
                text = mark[1]
                reference[mark[0]] = probs[:, :, text:, :][..., columns[0]].mean(1)
            out = (probs.to(v.dtype) @ v)
            return out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])

        def run(override):
            options = patcher.model_options["transformer_options"]
            if override is not None:
                options = {**options, "optimized_attention_override": override}
            hooks.store.start(columns)
            out = model.apply_model(x, torch.tensor([0.7]), c_crossattn=context, y=pooled,
                                    guidance=torch.tensor([3.5]), transformer_options=options)
            maps = hooks.store.mean_map(4, 4) if override is None else None     # the naive one records its own
            return out, maps

        out, maps = run(None)
        weights = torch.rand(maps.shape, generator=g)
        (grad,) = torch.autograd.grad((maps * weights).sum(), context)
        hooks.store.stop()
        out_ref, _ = run(naive)
        hooks.store.stop()
        maps_ref = torch.stack(list(reference.values())).mean(0).transpose(1, 2).reshape(1, 2, 4, 4)
        (grad_ref,) = torch.autograd.grad((maps_ref * weights).sum(), context)
        for guard in guards:
            guard.remove()
    assert isinstance(hooks.store, store_cls)
    torch.testing.assert_close(maps, maps_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-3, atol=1e-8)
    torch.testing.assert_close(out, out_ref, rtol=1e-3, atol=1e-4)


def test_flux_refuses_a_full_fine_tune(bas, run_node, flux, scene):
    with pytest.raises(Exception) as error:
        run_node(bas.classes["BreakASceneTrainer"], model=flux.model, clip=flux.clip, vae=flux.vae, scene=scene,
                 **{**TRAIN, "mode": "full"})
    message = str(error.value)
    assert "mode" in message and "lora" in message and "Traceback" not in message, message


def _flux_sample(model, positive, steps: int = 2) -> torch.Tensor:
    """ComfyUI's KSampler on a 16-channel 8x8 latent, cfg 1 (Flux dev runs without a negative)."""
    import nodes as comfy_nodes

    with torch.inference_mode():
        return comfy_nodes.common_ksampler(model, 0, steps, 1.0, "euler", "simple", positive, positive,
                                           {"samples": torch.zeros(1, 16, 8, 8)})[0]["samples"]


def test_flux_pack_samples_through_the_nodes_and_through_stock_nodes(bas, run_node, flux, trained, comfy_dirs):
    """Handle Injector + Concept Prompt Encoder sample with the pack; the exported LoRA (kohya names) through stock
    LoraLoader and the exported embeddings (keys t5xxl, clip_l) through stock ``embedding:`` give the same latent."""
    import comfy.sd
    import comfy.utils
    import nodes as comfy_nodes
    from safetensors.torch import save_file

    concepts = trained[0]
    pack_module = bas.module("bas_engine.pack")
    new_model, new_clip = run_node(bas.classes["HandleInjector"], model=flux.model, clip=flux.clip,
                                   concepts=concepts, strength_model=1.0, strength_clip=1.0).args
    text = "a photo of <asset0> and <asset1>"
    positive = run_node(bas.classes["ConceptPromptEncoder"], clip=new_clip, concepts=concepts, text=text).args[0]
    ours = _flux_sample(new_model, positive)
    assert torch.isfinite(ours).all()

    lora = pack_module.export_kohya_lora(concepts.pack)
    assert all(k.startswith("lora_unet_double_blocks_0_") or k.startswith("lora_unet_single_blocks_0_") for k in lora)
    lora_path = os.path.join(comfy_dirs.loras, "flux_pack.safetensors")
    save_file(lora, lora_path)
    for stem, (name, state) in zip(concepts.stems(), pack_module.export_embeddings(concepts.pack).items()):
        assert sorted(state) == ["clip_l", "t5xxl"] and state["t5xxl"].shape == (1, 4096), name
        save_file(state, os.path.join(comfy_dirs.embeddings, stem + ".safetensors"))
    with torch.inference_mode():
        stock_model, stock_clip = comfy_nodes.LoraLoader().load_lora(flux.model, flux.clip, "flux_pack.safetensors",
                                                                     1.0, 1.0)
        stock_clip = stock_clip.clone()
        stock_clip.tokenizer.t5xxl.embedding_directory = [str(comfy_dirs.embeddings)]
        stock_clip.tokenizer.clip_l.embedding_directory = [str(comfy_dirs.embeddings)]
        # the prompt the Concept Prompt Encoder writes: the same embedding words, now read from the files
        stock_text = bas.module("nodes.prompt").rewrite_prompt(text, concepts)
        stock_positive = comfy_nodes.CLIPTextEncode().encode(stock_clip, stock_text)[0]
    stock = _flux_sample(stock_model, stock_positive)
    torch.testing.assert_close(stock, ours, rtol=1e-4, atol=1e-4)
    # both parts count: without the LoRA, or with the plain words instead of the handles, the latent differs
    with torch.inference_mode():
        plain = comfy_nodes.CLIPTextEncode().encode(stock_clip, "a photo of cat and bowl")[0]
    assert not torch.equal(_flux_sample(flux.model, stock_positive), stock), "the LoRA changed nothing"
    assert not torch.equal(_flux_sample(stock_model, plain), stock), "the handles changed nothing"


def test_flux_prompt_encoder_sets_the_guidance(bas, run_node, flux, trained):
    """The Concept Prompt Encoder puts its guidance on Flux's conditioning as CLIPTextEncodeFlux does (default:
    TrainConfig's, the value training used), and the sampler reads it."""
    concepts = trained[0]

    def encode(**guidance):
        return run_node(bas.classes["ConceptPromptEncoder"], clip=flux.clip, concepts=concepts,
                        text="a photo of <asset0>", **guidance).args[0]

    default = encode()
    assert default[0][1]["guidance"] == bas.module("bas_engine.config").TrainConfig().guidance == 3.5
    low = encode(guidance=1.0)
    assert low[0][1]["guidance"] == 1.0
    torch.testing.assert_close(low[0][0], default[0][0], rtol=0, atol=0)       # the text is the same
    assert not torch.equal(_flux_sample(flux.model, low), _flux_sample(flux.model, default)), \
        "the transformer's guidance input ignored the value"


def test_flux_all_in_one_checkpoint_trains_in_place(bas, run_node, flux, scene):
    """A Flux checkpoint through Load Checkpoint (transformer + VAE in one file, prefixes as ComfyUI saves them):
    detected as Flux, trained in place with the CLIP a DualCLIPLoader gives, the MODEL that flowed in unchanged."""
    import folder_paths
    import nodes as comfy_nodes

    path = save_flux_checkpoint(os.path.join(CACHE, "flux-v1", "tiny_flux_checkpoint.safetensors"))
    folder_paths.add_model_folder_path("checkpoints", os.path.dirname(path))
    with torch.inference_mode():
        model, clip, vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(os.path.basename(path))
    assert clip is None, "the checkpoint holds no text encoder"
    assert type(model.model.model_config).__name__ == "Flux"
    with pytest.raises(ValueError, match=r"^clip: "):
        run_node(bas.classes["BreakASceneTrainer"], model=model, clip=clip, vae=vae, scene=scene,
                 **{**TRAIN, "pack_name": "flux_checkpoint"})
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    concepts = run_node(bas.classes["BreakASceneTrainer"], model=model, clip=flux.clip, vae=vae, scene=scene,
                        **{**TRAIN, "pack_name": "flux_checkpoint", "phase1_steps": 1, "phase2_steps": 1}).args[0]
    pack = concepts.pack
    assert pack.family == "flux" and any(k.startswith("unet.double_blocks.0.") for k in pack.lora)
    for key, value in model.model.diffusion_model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed in the MODEL that flowed in"
    del model, vae
    mm.unload_all_models()
    gc.collect()


def test_flux_trains_through_fp8_frozen_weights(bas, run_node, flux, scene):
    """The 24 GB case: Load Diffusion Model with weight_dtype fp8_e4m3fn stores the transformer in fp8 and casts each
    layer per use; the LoRA wrappers run on the cast weight, train, and the fp8 weights stay as they were."""
    import nodes as comfy_nodes
    import folder_paths

    folder_paths.add_model_folder_path("diffusion_models", os.path.dirname(flux.paths["unet"]))
    with torch.inference_mode():
        model = comfy_nodes.UNETLoader().load_unet(os.path.basename(flux.paths["unet"]), "fp8_e4m3fn")[0]
    weights = model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    assert weights.dtype == torch.float8_e4m3fn
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    concepts = run_node(bas.classes["BreakASceneTrainer"], model=model, clip=flux.clip, vae=flux.vae, scene=scene,
                        **{**TRAIN, "pack_name": "flux_fp8", "phase1_steps": 1, "phase2_steps": 2}).args[0]
    pack = concepts.pack
    ups = [v for k, v in pack.lora.items() if k.endswith(".lora_up")]
    assert ups and all(torch.isfinite(v).all() for v in ups) and any(v.abs().sum() > 0 for v in ups), \
        "phase 2 did not train through the fp8 weights"
    assert all(v.dtype == torch.float32 for v in pack.lora.values() if v.ndim)
    for key, value in model.model.diffusion_model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value.float(), before[key].float()), key
    del model
    mm.unload_all_models()
    gc.collect()


# -- bad input --------------------------------------------------------------------------------------------------

def test_flux_with_a_wrong_clip_is_a_clear_error(bas, run_node, flux, scene, checkpoint_path):
    """An SD CLIP, or CLIP-L alone (no T5), on the Flux MODEL: node errors naming the clip input."""
    import comfy.sd

    with torch.inference_mode():
        _, sd_clip, _, _ = comfy.sd.load_checkpoint_guess_config(checkpoint_path("sd15"), output_vae=False,
                                                                 output_clip=True, embedding_directory=None)
        clip_l_only = comfy.sd.load_clip([flux.paths["clip_l"]], clip_type=comfy.sd.CLIPType.FLUX,
                                         model_options={"model_config": dict(CLIP_L_CONFIG)})
    for clip in (sd_clip, clip_l_only):
        with pytest.raises(ValueError, match=r"^clip: this CLIP has a clip_l text encoder, but the Flux\.1 model "
                                             r"needs t5xxl \+ clip_l"):
            run_node(bas.classes["BreakASceneTrainer"], model=flux.model, clip=clip, vae=flux.vae, scene=scene,
                     **TRAIN)


def test_flux_refuses_a_pack_made_on_another_family(bas, run_node, flux, trained):
    import copy
    import dataclasses

    pack = copy.copy(trained[0].pack)
    pack.meta = {**pack.meta, "family": "sdxl"}
    concepts = dataclasses.replace(trained[0], pack=pack)
    with pytest.raises(ValueError, match=r"^concepts: .*SDXL.*Flux\.1"):
        run_node(bas.classes["HandleInjector"], model=flux.model, clip=flux.clip, concepts=concepts,
                 strength_model=1.0, strength_clip=1.0)


def test_flux_memory_estimate_counts_the_transformers_parameters(bas, flux):
    """bas_engine.flux_memory counts parameters from the architecture: equal to ComfyUI's own Flux of that shape."""
    flux_memory = bas.module("bas_engine.flux_memory")
    model = flux.model.model.diffusion_model
    shape = flux_memory.FluxShape(double_blocks=len(model.double_blocks), single_blocks=len(model.single_blocks),
                                  pooled=model.params.vec_in_dim)
    assert shape.transformer_parameters() == sum(p.numel() for p in model.parameters())
    targets = bas.module("nodes.comfy_model.flux").LORA_TARGETS
    linears = [m for path, m in model.named_modules() if targets.match(path)]
    assert shape.lora_parameters(4) == sum(4 * (m.in_features + m.out_features) for m in linears)
    # the patched copies phase 2 keeps: every adapted weight, or with checkpointing one block's
    assert shape.target_parameters(False) == sum(m.weight.numel() for m in linears)
    double = [m for path, m in model.named_modules() if targets.match(path) and path.startswith("double_blocks.0.")]
    assert shape.target_parameters(True) == sum(m.weight.numel() for m in double)      # the larger block
    # and the node plans with the same figures (its own layer walk)
    weights = bas.module("nodes.comfy_model.weights").TrainableWeights
    parts = bas.module("nodes.comfy_model.flux").FluxParts(flux.model)
    planned = weights.phase2_bytes(parts.trainable_layers(), targets, "lora", 4, parts.checkpoint_modules(), 2)
    fixed = shape.lora_parameters(4) * 16 + 2 * 4 * shape.largest_target()
    assert shape.largest_target() == max(m.weight.numel() for m in linears)
    assert planned == {False: fixed + 2 * shape.target_parameters(False), True: fixed + 2 * shape.target_parameters(True)}
