"""The v2 toy model design (issue 10) stays inside the rules: SD-family components that load through the engine,
cross-attention at 1/4 of the latent resolution with maps of at least 8x8, fp16 weights <= 40 MB."""
import pytest
import torch

from bas_toyworld.model import (
    TOY_CONFIGS, build_scheduler, build_text_encoder, build_unet, build_vae, save_pipeline, weights_size_mb,
)
from bas_toyworld.tokenizer import build_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def saved_v2(tmp_path_factory):
    cfg = TOY_CONFIGS["v2"]
    tok = load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("v2")
    save_pipeline(d, build_vae(cfg), build_unet(cfg), build_text_encoder(cfg, tok), tok, build_scheduler())
    return d


def test_v1_design_is_the_committed_one():
    from bas_toyworld.model import ToyModelConfig

    assert TOY_CONFIGS["v1"] == ToyModelConfig()  # the committed weights/toy_sd were made with it


def test_v2_geometry_and_size(saved_v2):
    cfg = TOY_CONFIGS["v2"]
    assert cfg.latent_size // 4 in cfg.attention_resolutions and cfg.latent_size // 4 >= 8
    assert weights_size_mb(saved_v2) <= 40


def test_v2_loads_through_the_engine_with_attention_at_quarter_resolution(saved_v2):
    from bas_engine.models import load_model

    comps = load_model(str(saved_v2), dtype=torch.float32)
    assert comps.family == "sd1" and comps.prediction_type == "epsilon"
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
    assert sizes == {16, 8}
