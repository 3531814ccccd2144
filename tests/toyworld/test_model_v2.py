"""The v2 toy model design (issue 10) stays inside the rules: SD-family components that load through the engine,
cross-attention at 1/4 of the latent resolution with maps of at least 8x8, fp16 weights <= 40 MB."""
import pytest
import torch

from bas_toyworld.model import (
    TOY_CONFIGS, build_scheduler, build_text_encoder, build_unet, build_vae, save_pipeline, weights_size_mb,
)
from bas_toyworld.tokenizer import build_tokenizer, load_tokenizer


@pytest.fixture(scope="module", params=["v2", "v2t", "v2v", "v2va"])
def saved_v2(request, tmp_path_factory):
    cfg = TOY_CONFIGS[request.param]
    tok = load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp(request.param)
    save_pipeline(d, build_vae(cfg), build_unet(cfg), build_text_encoder(cfg, tok), tok, build_scheduler(cfg))
    return request.param, d


def test_v1_design_is_the_committed_one():
    from bas_toyworld.model import ToyModelConfig

    assert TOY_CONFIGS["v1"] == ToyModelConfig()  # the committed weights/toy_sd were made with it


def test_v2_geometry_and_size(saved_v2):
    name, saved = saved_v2
    cfg = TOY_CONFIGS[name]
    assert cfg.latent_size // 4 in cfg.attention_resolutions and cfg.latent_size // 4 >= 8
    assert weights_size_mb(saved) <= 40


def test_v2_loads_through_the_engine_with_attention_at_quarter_resolution(saved_v2):
    from bas_engine.models import load_model

    comps = load_model(str(saved_v2[1]), dtype=torch.float32)
    cfg = TOY_CONFIGS[saved_v2[0]]
    assert comps.family == "sd1" and comps.prediction_type == cfg.prediction_type
    # the schedule travels with the folder: v2v's last timestep is pure noise, as its sampler's first
    assert (float(comps.noise_scheduler.alphas_cumprod[-1]) == 0.0) == cfg.zero_terminal_snr
    sizes = set()

    def hook(mod, args, kwargs, out):
        if kwargs.get("encoder_hidden_states") is not None:
            sizes.add(int(args[0].shape[1] ** 0.5))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for n, m in comps.unet.named_modules()
               if n.endswith("attn2")]
    with torch.no_grad():
        comps.unet(torch.zeros(1, 4, 32, 32), torch.tensor([10]), torch.zeros(1, 40, 768))
    for h in handles:
        h.remove()
    assert sizes == set(cfg.attention_resolutions) and 8 in sizes


def test_v2_trains_and_generates_through_the_engine(saved_v2):
    """A two-step Break-A-Scene run and generation with the handles, on each design (v2t's pooled-caption pathway
    takes the handles' states like any other token's)."""
    from bas_toyworld.extraction import extract_and_score, prompt_cases, toy_config
    from bas_toyworld.world import make_demo_scene

    demo = make_demo_scene(0)
    cases = prompt_cases(3, demo.spec.background)[:2]
    run = extract_and_score(demo, toy_config(phase1_steps=1, phase2_steps=1), cases, (0,), model_dir=saved_v2[1],
                            sample_steps=2)
    assert run.pack.handles["clip_l"].shape[0] == 3 and [r.case for r in run.results] == cases
    assert all(r.images[0].image.shape == (64, 64, 3) for r in run.results)


def test_family_detection_of_extra_conditioning():
    """"text" (the UNet pools the token states itself) needs nothing from the caller: SD1 at width 768; an extra
    input the engine does not supply is refused by name."""
    from diffusers import UNet2DConditionModel

    from bas_engine.components import detect_family
    from bas_engine.errors import ModelError

    def unet(**extra) -> UNet2DConditionModel:
        return UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
                                    attention_head_dim=2, norm_num_groups=8, **extra)

    assert detect_family(unet()) == "sd1"
    assert detect_family(unet(addition_embed_type="text", addition_embed_type_num_heads=12)) == "sd1"
    with pytest.raises(ModelError, match="takes extra conditioning 'image'"):
        detect_family(unet(addition_embed_type="image", encoder_hid_dim=768))
