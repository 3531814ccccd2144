"""End-to-end `bas` CLI run on a tiny model folder and a real scene from ../shared/scenes."""
from __future__ import annotations

import os

import pytest
from PIL import Image
from safetensors.torch import load_file

from bas_engine.cli import main
from bas_engine.testing import save_model
from bas_engine.pack import load_pack
from bas_engine.testing import tiny_components
from engine_helpers import SHARED_SCENES, needs_shared_scenes

SCENE = os.path.join(SHARED_SCENES, "creature")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny-model"))
    save_model(tiny_components(), path)
    return path


@needs_shared_scenes
def test_extract_export_generate(model_dir, tmp_path, capsys):
    pack_path = str(tmp_path / "creature.safetensors")
    code = main(["extract", SCENE, "--model", model_dir, "--out", pack_path, "--names", "figurine,bowl,stone",
                 "--init", "figurine,,stone", "--resolution", "64", "--phase1-steps", "2", "--phase2-steps", "2",
                 "--device", "cpu", "--seed", "3"])
    assert code == 0
    pack = load_pack(pack_path)
    assert pack.names == ["figurine", "bowl", "stone"]
    assert pack.tokens == ["<asset0>", "<asset1>", "<asset2>"]
    assert pack.initializers == ["figurine", None, "stone"]
    assert pack.meta["settings"]["seed"] == 3 and pack.meta["training_size"] == [64, 64]
    assert "<asset0> = figurine" in capsys.readouterr().out

    lora_path, emb_dir = str(tmp_path / "lora.safetensors"), str(tmp_path / "emb")
    assert main(["export", pack_path, "--lora", lora_path, "--embeddings", emb_dir]) == 0
    assert any(k.startswith("lora_unet_") for k in load_file(lora_path))
    assert sorted(os.listdir(emb_dir)) == ["creature_bowl.safetensors", "creature_figurine.safetensors",
                                           "creature_stone.safetensors"]

    out_dir = tmp_path / "images"
    assert main(["generate", pack_path, "--model", model_dir, "--prompt", "a photo of <figurine> and <asset2>",
                 "--out", str(out_dir), "--steps", "2", "--num", "2", "--device", "cpu"]) == 0
    images = sorted(os.listdir(out_dir))
    assert len(images) == 2
    assert Image.open(out_dir / images[0]).size == (64, 64)
    assert "warning" not in capsys.readouterr().err  # same base model: no fingerprint warning


def test_bad_inputs_are_clear_errors(model_dir, tmp_path, capsys):
    assert main(["extract", str(tmp_path / "missing"), "--model", model_dir, "--out", str(tmp_path / "p")]) == 2
    assert "scene folder" in capsys.readouterr().err
    scene = tmp_path / "scene"
    scene.mkdir()
    Image.new("RGB", (32, 32), "red").save(scene / "img.png")
    Image.new("L", (32, 32), 255).save(scene / "mask0.png")
    assert main(["extract", str(scene), "--model", model_dir, "--out", str(tmp_path / "p"),
                 "--names", "a,b"]) == 2
    assert "names: got 2 concept names for 1 masks" in capsys.readouterr().err
    assert main(["extract", str(scene), "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "p")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "nopack.safetensors"), "--model", model_dir, "--prompt", "x",
                 "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_options_take_their_defaults_from_train_config():
    """One source of defaults: `bas extract` with no options trains with TrainConfig()."""
    from bas_engine.cli import _train_config, build_parser
    from bas_engine.config import TrainConfig

    args = build_parser().parse_args(["extract", "scene", "--model", "m", "--out", "o"])
    assert _train_config(args) == TrainConfig()
    args = build_parser().parse_args(["extract", "scene", "--model", "m", "--out", "o", "--no-masked-loss",
                                      "--tokens", "<a>,<b>", "--lora-alpha", "8"])
    config = _train_config(args)
    assert (config.masked_loss, config.tokens, config.lora_alpha) == (False, ["<a>", "<b>"], 8.0)


def test_out_of_range_resolution_is_a_clear_error_before_loading(model_dir, tmp_path, capsys):
    scene = tmp_path / "scene"
    scene.mkdir()
    Image.new("RGB", (32, 32), "red").save(scene / "img.png")
    Image.new("L", (32, 32), 255).save(scene / "mask0.png")
    assert main(["extract", str(scene), "--model", str(tmp_path / "not-loaded"), "--out", str(tmp_path / "p"),
                 "--resolution", "100000"]) == 2
    err = capsys.readouterr().err
    assert "resolution must be between 64 and 4096, got 100000" in err and "Traceback" not in err


def test_pack_of_another_model_is_refused_before_tensor_work(trained, model_dir, tmp_path, capsys):
    """A pack trained on the tiny model (32-wide clip_l) used with the toy model (768-wide, also SD1.x)."""
    from bas_engine.pack import save_pack

    pack, _ = trained
    pack_path = str(tmp_path / "tiny.safetensors")
    save_pack(pack, pack_path)
    toy = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bas_toyworld", "weights", "toy_sd")
    assert main(["generate", pack_path, "--model", toy, "--prompt", "<asset0>", "--out", str(tmp_path / "img"),
                 "--steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"concept pack {pack_path!r} was trained on a model whose clip_l text encoder is 32 wide, but the " \
           "model given has a 768-wide clip_l" in err
    assert "Traceback" not in err and not (tmp_path / "img").exists()


def test_progress_bar_writes_at_a_bounded_rate_into_a_log():
    import io

    from bas_engine.callbacks import ProgressEvent
    from bas_engine.cli import progress_bar, training_progress

    log = io.StringIO()                      # not a terminal
    with progress_bar(8000, "step", log) as bar:
        progress = training_progress(bar)    # what `bas extract` reports each step
        for step in range(1, 8001):
            progress(ProgressEvent(1 + step // 4001, step, 4000, step, 8000, {"loss": 0.1, "attention": 0.2}))
    lines = [line for line in log.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, lines        # start, (maybe one timed line), end: not 8,000 lines
    assert "8000/8000" in lines[-1]


def test_pack_on_a_fine_tune_of_the_same_model_warns_once(trained, tmp_path, capsys):
    """Same family and widths, other weights (as a fine-tune): allowed, with one warning line."""
    from bas_engine.pack import save_pack

    pack, _ = trained
    pack_path = str(tmp_path / "tiny.safetensors")
    save_pack(pack, pack_path)
    other = str(tmp_path / "other-weights")
    save_model(tiny_components(seed=1), other)
    assert main(["generate", pack_path, "--model", other, "--prompt", "<asset0>", "--out", str(tmp_path / "img"),
                 "--steps", "1", "--device", "cpu"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "was trained on base weights" in warnings[0]
