from pathlib import Path

import numpy as np
import pytest
import torch

from bas_toyworld.model import (
    ToyModelConfig, build_scheduler, build_text_encoder, build_unet, build_vae, load_pipeline, save_pipeline,
    weights_size_mb,
)
from bas_toyworld.tokenizer import build_tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def test_config_geometry():
    cfg = ToyModelConfig()
    assert cfg.vae_factor == 2 and cfg.latent_size == 32
    assert cfg.latent_size // 4 in cfg.attention_resolutions and min(cfg.attention_resolutions) >= 8
    assert cfg.text_dim == 768  # SD 1.x context width


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = ToyModelConfig()
    tok = load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    save_pipeline(d, build_vae(cfg), build_unet(cfg), build_text_encoder(cfg, tok), tok, build_scheduler())
    return d


def test_saved_folder_is_a_standard_sd_pipeline(saved):
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from safetensors import safe_open

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (saved / sub).is_dir()
    assert (saved / "model_index.json").is_file() and (saved / "tokenizer" / "vocab.json").is_file()
    assert weights_size_mb(saved) <= 30
    with safe_open(str(saved / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    pipe = StableDiffusionPipeline.from_pretrained(str(saved), dtype=torch.float32)
    assert isinstance(pipe.scheduler, DDPMScheduler) and pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 768
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 32


def test_cross_attention_at_quarter_latent_resolution(saved):
    pipe = load_pipeline(saved)
    sizes = set()

    def hook(mod, args, kwargs, out):
        if kwargs.get("encoder_hidden_states") is not None:
            sizes.add(int(args[0].shape[1] ** 0.5))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for n, m in pipe.unet.named_modules()
               if n.endswith("attn2")]
    ctx = torch.zeros(1, pipe.tokenizer.model_max_length, 768)
    with torch.no_grad():
        pipe.unet(torch.zeros(1, 4, 32, 32), torch.tensor([10]), ctx)
    for h in handles:
        h.remove()
    assert sizes == {16, 8}


def test_pipeline_generates(saved):
    from bas_toyworld.preview import PreviewPrompt, sample, save_grid, score
    from bas_toyworld.world import Concept

    pipe = load_pipeline(saved)
    rows = sample(pipe, ["a red star on the beach"], seeds=[0], steps=2, guidance=2.0)
    assert rows[0][0].shape == (64, 64, 3) and rows[0][0].dtype == np.uint8
    s = score(rows, [PreviewPrompt("a red star on the beach", Concept("star", "red", "solid"), "beach")])
    assert 0.0 <= s[0]["identity"] <= 1.0 and 0.0 <= s[0]["fidelity"] <= 1.0


def test_pretrain_script_end_to_end_and_deterministic(tmp_path, pretrain_script):
    mod = pretrain_script
    args = ["--minutes", "5", "--threads", "1", "--vae-steps", "2", "--unet-steps", "2", "--batch", "2",
            "--vae-batch", "2", "--preview-seeds", "0", "--seed", "3"]
    log = mod.main(["--out", str(tmp_path / "a")] + args)
    assert log["unet_steps"] == 2 and log["weights_mb"] <= 30 and "vae_scaling_factor" in log
    import json

    recipe = json.loads((tmp_path / "a" / "model" / "pretrain.json").read_text())
    assert recipe["command"].startswith("python scripts/pretrain_toy.py --out OUT --minutes 5")
    assert recipe["seed"] == 3 and len(recipe["weights_sha256"]["unet"]) == 64
    mod.main(["--out", str(tmp_path / "b")] + args)
    from safetensors.torch import load_file

    for sub, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model"), ("vae", "diffusion_pytorch_model")):
        a = load_file(str(tmp_path / "a" / "model" / sub / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "model" / sub / f"{name}.safetensors"))
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        # Bitwise equal when run alone; after other tests in the same process oneDNN/MKL may take
        # alignment-dependent paths, giving ~1 fp16 ulp after two steps.
        assert diff <= 1e-3, (sub, diff)
    pipe = load_pipeline(tmp_path / "a" / "model")
    assert abs(pipe.vae.config.scaling_factor - log["vae_scaling_factor"]) < 1e-6
    assert mod.plan(40)[1] > 1000  # a 40-minute plan trains the UNet for >1000 steps


def test_preview_prompts_speak_the_models_world():
    """The preview asks a model in its own world's words: every concept's shape, texture and background is the
    world's, each prompt is the world's canonical caption, and the world's novel concepts are there."""
    from bas_toyworld.preview import default_prompts
    from bas_toyworld.worlds import WORLDS

    for name, world in WORLDS.items():
        prompts = default_prompts(name)
        assert len(prompts) == 9 and {p.concept.shape for p in prompts} == set(world.shapes[:6])
        for p in prompts:
            assert p.concept.shape in world.shapes and p.concept.texture in world.textures
            assert p.background in world.backgrounds and p.concept.shape in p.text and p.concept.colour in p.text
        assert [p.concept for p in prompts[-2:]] == list(world.novel_concepts[:2])
    assert all("large" not in p.text for p in default_prompts("v3"))  # v3 has one size and no size word
