"""ComfyUI <-> engine conversion: the diffusers modules built by bas_engine.ldm from ComfyUI's own state dict
compute what ComfyUI computes.  Needs a ComfyUI checkout (COMFYUI_PATH) and its venv, e.g.

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_comfy_convert.py

The fixture checkpoints (random weights, SD shapes, ~0.7-1 GB each) are cached in $BAS_TEST_CACHE
(default <repo>/.cache/test_models) and rebuilt when missing.
"""
from __future__ import annotations

import os
import sys

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (COMFYUI_PATH, REPO, os.path.join(REPO, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import comfy.model_management  # noqa: E402,F401  (conftest.py set it up for this machine's device)
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
from comfy.model_base import ModelType  # noqa: E402

from bas_engine import ldm  # noqa: E402
from comfy_fixtures import cached_checkpoint, comfy_tokenizer_dir  # noqa: E402

class Loaded:
    def __init__(self, name: str):
        self.path = cached_checkpoint(name)
        self.model, self.clip, self.vae, _ = comfy.sd.load_checkpoint_guess_config(
            self.path, output_vae=True, output_clip=True, embedding_directory=None)
        self.base = self.model.model
        ldm_sd = self.base.state_dict_for_saving(self.clip.get_sd(), self.vae.get_sd())
        self.prediction = "v_prediction" if self.base.model_type == ModelType.V_PREDICTION else "epsilon"
        self.components = ldm.components_from_ldm(
            ldm_sd, comfy_tokenizer_dir(COMFYUI_PATH), unet_config=self.base.model_config.unet_config,
            prediction_type=self.prediction)
        self.ldm_sd = ldm_sd


_LOADED: dict[str, Loaded] = {}


@pytest.fixture(scope="module", params=["sd15", "sd20v"])
def loaded(request):
    # one model in memory at a time (2 CPU cores / limited RAM on the test machine)
    if request.param not in _LOADED:
        _LOADED.clear()
        _LOADED[request.param] = Loaded(request.param)
    return _LOADED[request.param]


def test_detection(loaded):
    name = type(loaded.base.model_config).__name__
    if loaded.components.family == "sd1":
        assert name == "SD15" and loaded.base.model_type == ModelType.EPS
    else:
        assert name == "SD20" and loaded.base.model_type == ModelType.V_PREDICTION
    assert loaded.components.prediction_type == loaded.prediction


def test_unet_predicts_same_noise(loaded):
    unet = loaded.components.unet
    g = torch.Generator().manual_seed(0)
    ctx_dim = unet.config.cross_attention_dim
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([100, 700])
    ctx = torch.randn(2, 77, ctx_dim, generator=g)
    dm = loaded.base.diffusion_model
    with torch.no_grad():
        ref = dm(x.to(loaded.base.get_dtype()), timesteps=t, context=ctx.to(loaded.base.get_dtype())).float()
        out = unet(x, t, ctx).sample
    assert ref.abs().mean() > 1e-2
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    # the weight-inferred config (no unet_config) builds the same UNet for these SD layouts
    inferred = ldm.components_from_ldm(loaded.ldm_sd, comfy_tokenizer_dir(COMFYUI_PATH))
    assert dict(inferred.unet.config) == dict(unet.config)


def test_noise_schedule_and_apply_model(loaded):
    """ComfyUI's sigmas are the DDPM schedule of the engine's scheduler; apply_model's denoised output is
    x - sigma * eps (eps models) or the v-parameterised equivalent, from the same UNet output."""
    sched = loaded.components.noise_scheduler
    ms = loaded.base.model_sampling
    ac = sched.alphas_cumprod
    torch.testing.assert_close(ms.sigmas.float(), ((1 - ac) / ac).sqrt().float(), rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    sigma = ms.sigmas[400:401].float()
    x = torch.randn(1, 4, 16, 16, generator=g) * (sigma ** 2 + 1).sqrt()
    ctx = torch.randn(1, 77, loaded.components.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        denoised = loaded.base.apply_model(x, sigma, c_crossattn=ctx).float()
        t = ms.timestep(sigma).float()
        x_in = x / (sigma ** 2 + 1).sqrt()
        out = loaded.components.unet(x_in, t, ctx).sample
    s = sigma.view(1, 1, 1, 1)
    if loaded.prediction == "epsilon":
        expected = x - s * out
    else:   # v: x0 = x_in * alpha - v * sigma_t in the DDPM (alpha, sigma_t) parameterisation
        a = 1 / (s ** 2 + 1).sqrt()
        expected = x * a * a - out * s * a
    torch.testing.assert_close(denoised, expected, rtol=1e-3, atol=2e-3)


def test_text_encoder_same_conditioning(loaded):
    prompt = "a photo of a cat on a red chair"
    tokens = loaded.clip.tokenize(prompt)
    with torch.no_grad():
        cond = loaded.clip.encode_from_tokens(tokens).float()
        ids = loaded.components.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                                          return_tensors="pt").input_ids
        comfy_ids = [t[0] for t in next(iter(tokens.values()))[0]]
        assert ids[0].tolist() == [int(i) for i in comfy_ids]
        ours = loaded.components.text_encoder(ids)[0]
    assert cond.shape == ours.shape
    te_dtype = next(loaded.clip.cond_stage_model.parameters()).dtype
    tol = 1e-3 if te_dtype == torch.float32 else 3e-2
    torch.testing.assert_close(ours, cond, rtol=tol, atol=tol)


def test_key_maps_match_comfy(loaded):
    comps = loaded.components
    ours = ldm.diffusers_to_ldm_unet_keys(comps.unet)
    theirs = comfy.utils.unet_to_diffusers(loaded.base.model_config.unet_config)   # diffusers -> ldm
    assert {k: ours[k] for k in theirs if k in ours} == {k: v for k, v in theirs.items() if k in ours}
    assert set(ours) <= set(theirs)
    comfy_unet = set(loaded.base.state_dict())
    assert {"diffusion_model." + v for v in ours.values()} == {k for k in comfy_unet if k.startswith("diffusion_model.")}
    clip_keys = set(loaded.clip.patcher.model.state_dict())
    te_map = ldm.diffusers_to_comfy_clip_keys(comps.text_encoder, comps.spec.text_encoders[0])
    assert set(te_map.values()) <= clip_keys


def test_add_patches_with_mapped_keys(loaded):
    """Weight deltas keyed by the mapped names reach the right tensors through ModelPatcher.add_patches and
    ComfyUI's own loading path (load_models_gpu / encode_from_tokens): ComfyUI's outputs then equal the
    diffusers modules with the same deltas added."""
    import comfy.model_management as mm

    comps = loaded.components
    umap = ldm.diffusers_to_ldm_unet_keys(comps.unet)
    names = [n for n in umap if n.endswith(("attn2.to_k.weight", "conv_in.weight"))][:3]
    g = torch.Generator().manual_seed(2)
    deltas = {n: 0.05 * torch.randn(comps.unet.state_dict()[n].shape, generator=g) for n in names}
    te_names = ["encoder.layers.0.self_attn.q_proj.weight", "embeddings.token_embedding.weight"]
    te_map = ldm.diffusers_to_comfy_clip_keys(te_names, comps.spec.text_encoders[0])
    te_deltas = {n: 0.05 * torch.randn(comps.text_encoder.state_dict()[n].shape, generator=g) for n in te_names}

    m = loaded.model.clone()
    assert len(m.add_patches({"diffusion_model." + umap[n]: (d,) for n, d in deltas.items()}, 1.0)) == len(names)
    c = loaded.clip.clone()
    assert len(c.add_patches({te_map[n]: (d,) for n, d in te_deltas.items()}, 1.0)) == len(te_names)

    x, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500])
    ctx = torch.randn(1, 77, comps.unet.config.cross_attention_dim, generator=g)
    prompt = "a photo of a dog"
    ids = comps.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    try:
        with torch.no_grad():
            mm.load_models_gpu([m])
            ref = m.model.diffusion_model(x, timesteps=t, context=ctx).float()
            cond = c.encode_from_tokens(c.tokenize(prompt)).float()
            for module, dd in ((comps.unet, deltas), (comps.text_encoder, te_deltas)):
                params = dict(module.named_parameters())
                for n, d in dd.items():
                    params[n].add_(d)
            out = comps.unet(x, t, ctx).sample
            ours = comps.text_encoder(ids)[0]
    finally:
        with torch.no_grad():
            for module, dd in ((comps.unet, deltas), (comps.text_encoder, te_deltas)):
                params = dict(module.named_parameters())
                for n, d in dd.items():
                    params[n].sub_(d)
        mm.unload_all_models()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    te_dtype = next(loaded.clip.cond_stage_model.parameters()).dtype
    tol = 1e-3 if te_dtype == torch.float32 else 3e-2
    torch.testing.assert_close(ours, cond, rtol=tol, atol=tol)
    with torch.no_grad():     # unpatched again
        base = loaded.base.diffusion_model(x, timesteps=t, context=ctx).float()
    assert not torch.allclose(base, ref, atol=1e-3)


def test_handle_vectors_in_comfy_token_lists(loaded, tmp_path):
    """A vector can stand in a ComfyUI token list as (tensor, weight): the CLIP encoder inserts it as that
    position's input embedding, exactly like a token whose embedding row is that vector.  The same vector
    saved as a single-key .safetensors file works as ``embedding:NAME`` in the prompt text."""
    from safetensors.torch import save_file

    comps = loaded.components
    clip = loaded.clip
    emb = comps.text_encoder.get_input_embeddings().weight
    g = torch.Generator().manual_seed(3)
    vec = torch.randn(emb.shape[1], generator=g) * emb.detach().float().std()
    prompt = "a photo of sks on a table"
    sks = comps.tokenizer("sks", add_special_tokens=False).input_ids
    assert len(sks) == 1
    ids = comps.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids

    tokens = clip.tokenize(prompt)
    key = next(iter(tokens))
    tokens[key] = [[((vec, w) if t == sks[0] else (t, w)) for (t, w, *_) in chunk] for chunk in tokens[key]]
    saved = emb.data[sks[0]].clone()
    with torch.no_grad():
        raw = clip.encode_from_tokens(tokens).float()
        emb.data[sks[0]] = vec.to(emb.dtype)
        try:
            ours = comps.text_encoder(ids)[0]
        finally:
            emb.data[sks[0]] = saved
    te_dtype = next(clip.cond_stage_model.parameters()).dtype
    tol = 1e-3 if te_dtype == torch.float32 else 3e-2
    torch.testing.assert_close(ours, raw, rtol=tol, atol=tol)

    save_file({"emb_params": vec[None].contiguous()}, str(tmp_path / "bas_test_handle.safetensors"))
    tok = getattr(clip.tokenizer, clip.tokenizer.clip)
    old = tok.embedding_directory
    tok.embedding_directory = [str(tmp_path)]
    try:
        with torch.no_grad():
            by_file = clip.encode_from_tokens(clip.tokenize("a photo of embedding:bas_test_handle on a table")).float()
    finally:
        tok.embedding_directory = old
    torch.testing.assert_close(by_file, raw, rtol=1e-4, atol=1e-4)
