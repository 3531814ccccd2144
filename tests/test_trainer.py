"""The two-phase trainer: every setting combination runs, phase-2 weights move, components come back as they
were, cancellation, progress and preview events, and seeded determinism."""
from __future__ import annotations

import math
import os

import pytest
import torch

from bas_engine.callbacks import TrainCallbacks
from bas_engine.errors import Cancelled
from bas_engine.lora import LoRALinear
from bas_engine.testing import tiny_components
from bas_engine.trainer import train

from engine_helpers import RESOLUTION, assert_same_state, make_scene, small_config, state_snapshot

# A pairwise covering array of the seven two-valued settings: every pair of values of every two settings
# appears in at least one row (row 0 all "off"; the other rows are distinct weight-3 columns of length 5).
FACTORS = ("full", "attention", "prior", "batch2", "checkpointing", "v_prediction", "text_encoder")
ROWS = [
    (0, 0, 0, 0, 0, 0, 0),
    (1, 1, 1, 1, 1, 1, 0),
    (1, 1, 1, 0, 0, 0, 1),
    (1, 0, 0, 1, 1, 0, 1),
    (0, 1, 0, 1, 0, 1, 1),
    (0, 0, 1, 0, 1, 1, 0),
]


def test_rows_cover_every_pair():
    for i in range(len(FACTORS)):
        for j in range(i + 1, len(FACTORS)):
            assert {(row[i], row[j]) for row in ROWS} == {(0, 0), (0, 1), (1, 0), (1, 1)}, (FACTORS[i], FACTORS[j])


def snapshot(c) -> dict:
    modules = {"unet": c.unet, "text_encoder": c.text_encoder, "vae": c.vae}
    return {
        "state": {k: state_snapshot(m) for k, m in modules.items()},
        "flags": {k: (m.training, [p.requires_grad for p in m.parameters()]) for k, m in modules.items()},
        "processors": dict(c.unet.attn_processors),
        "embedding": c.text_encoder.get_input_embeddings(),
        "checkpointing": c.unet.is_gradient_checkpointing,
        "vocab": dict(c.tokenizer.get_vocab()),
    }


def assert_restored(c, before: dict) -> None:
    modules = {"unet": c.unet, "text_encoder": c.text_encoder, "vae": c.vae}
    for key, module in modules.items():
        assert_same_state(module, before["state"][key])
        assert (module.training, [p.requires_grad for p in module.parameters()]) == before["flags"][key], key
        assert not any(isinstance(m, LoRALinear) for m in module.modules()), f"LoRA left in {key}"
    processors = c.unet.attn_processors
    assert processors.keys() == before["processors"].keys()
    assert all(processors[name] is p for name, p in before["processors"].items())
    assert c.text_encoder.get_input_embeddings() is before["embedding"]
    assert c.unet.is_gradient_checkpointing == before["checkpointing"]
    assert c.tokenizer.get_vocab() == before["vocab"]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: "-".join(f for f, on in zip(FACTORS, row) if on) or "defaults")
def test_combination_runs(row, tmp_path):
    full, attention, prior, batch2, checkpointing, v_prediction, text_encoder = map(bool, row)
    c = tiny_components(seed=0, prediction_type="v_prediction" if v_prediction else "epsilon")
    before = snapshot(c)
    config = small_config(
        phase1_steps=1, phase2_steps=1, mode="full" if full else "lora",
        attention_loss_weight=0.01 if attention else 0.0, prior_preservation=prior, num_class_images=1,
        class_inference_steps=2, batch_size=2 if batch2 else 1, gradient_checkpointing=checkpointing,
        train_text_encoder=text_encoder)
    pack = train(c, make_scene(), config, device="cpu", cache_dir=str(tmp_path))

    assert pack.mode == config.mode and pack.meta["prediction_type"] == c.prediction_type
    assert pack.handles[c.encoder_name].shape == (3, c.text_encoder.config.hidden_size)
    assert torch.isfinite(pack.handles[c.encoder_name]).all()
    losses = pack.meta["losses"]
    for phase in (1, 2):
        assert {k for k in losses if k.startswith(f"phase{phase}_")} == {
            f"phase{phase}_{k}" for k in ("diffusion", "loss") + ("attention",) * attention + ("prior",) * prior}
    assert all(math.isfinite(v) for v in losses.values())
    if prior:
        assert len(os.listdir(tmp_path / "class_images")) == 1

    if full:
        assert pack.lora == {} and pack.deltas
        prefixes = {key.split(".")[0] for key in pack.deltas}
        assert prefixes == ({"unet", "text_encoder"} if text_encoder else {"unet"})
        assert not any("token_embedding" in key for key in pack.deltas)
        assert all(torch.count_nonzero(d) > 0 for d in pack.deltas.values())
        assert sum(1 for k in pack.deltas if k.startswith("unet.")) > len(list(c.unet.parameters())) // 2
    else:
        assert pack.deltas == {}
        prefixes = {key.split(".")[0] for key in pack.lora}
        assert prefixes == ({"unet", "text_encoder"} if text_encoder else {"unet"})
        ups = [v for k, v in pack.lora.items() if k.endswith(".lora_up")]
        assert ups and all(torch.count_nonzero(up) > 0 for up in ups)
    assert_restored(c, before)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_components_restored_after_two_phases(mode, tmp_path):
    c = tiny_components(seed=0)
    c.unet.enable_gradient_checkpointing()           # a caller's own setting is kept as it was
    before = snapshot(c)
    train(c, make_scene(), small_config(mode=mode, train_text_encoder=True, gradient_checkpointing=True),
          device="cpu", cache_dir=str(tmp_path))
    assert_restored(c, before)


def test_cancellation_raises_and_writes_nothing(tmp_path):
    c = tiny_components(seed=0)
    before = snapshot(c)
    events = []
    callbacks = TrainCallbacks(on_progress=events.append, should_cancel=lambda: len(events) >= 3)
    cache = tmp_path / "cache"
    with pytest.raises(Cancelled):
        train(c, make_scene(), small_config(), callbacks, device="cpu", cache_dir=str(cache))
    assert [e.done for e in events] == [1, 2, 3] and events[-1].phase == 2     # cancelled inside phase 2
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert_restored(c, before)
    with pytest.raises(Cancelled):                                            # before the first step
        train(c, make_scene(), small_config(), TrainCallbacks(should_cancel=lambda: True), device="cpu",
              cache_dir=str(cache))
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert_restored(c, before)


def test_progress_and_preview_events(tmp_path):
    progress, previews = [], []
    callbacks = TrainCallbacks(on_progress=progress.append, on_preview=previews.append, preview_every=1)
    config = small_config(phase1_steps=2, phase2_steps=3)
    train(tiny_components(seed=0), make_scene(), config, callbacks, device="cpu", cache_dir=str(tmp_path))

    assert [(e.phase, e.step, e.steps, e.done, e.total) for e in progress] == [
        (1, 1, 2, 1, 5), (1, 2, 2, 2, 5), (2, 1, 3, 3, 5), (2, 2, 3, 4, 5), (2, 3, 3, 5, 5)]
    for event in progress:
        assert {"loss", "diffusion", "attention"} <= set(event.losses)
        assert all(math.isfinite(v) for v in event.losses.values())
    assert [(e.phase, e.step, e.done) for e in previews] == [(e.phase, e.step, e.done) for e in progress]
    side = RESOLUTION // 2 // 4                      # latent 32 (VAE x2), maps at 1/4 of it
    for event in previews:
        assert event.maps.shape == (3, side, side)
        assert event.image.shape == (3, RESOLUTION, RESOLUTION)
        assert float(event.image.min()) >= 0 and float(event.image.max()) <= 1
        assert len(event.chosen) == 3 and any(event.chosen)
        assert event.tokens == ["<asset0>", "<asset1>", "<asset2>"]
        for n, chosen in enumerate(event.chosen):
            peak = float(event.maps[n].max())
            assert peak == (pytest.approx(1.0) if chosen else 0.0)


def test_previews_show_attention_without_the_attention_loss_and_say_when_flipped(tmp_path):
    """Ablations without the attention loss still report maps (to compare IoU); `flipped` tells which
    previews show the mirrored image (and maps)."""
    previews, steps = [], []
    config = small_config(phase1_steps=3, phase2_steps=3, attention_loss_weight=0.0)
    train(tiny_components(seed=0), make_scene(), config,
          TrainCallbacks(on_preview=previews.append, on_progress=steps.append, preview_every=2), device="cpu",
          cache_dir=str(tmp_path))
    assert [(e.phase, e.step) for e in previews] == [(1, 2), (1, 3), (2, 2), (2, 3)]
    assert all("attention" not in e.losses for e in steps)
    canonical = [e.image.flip(-1) if e.flipped else e.image for e in previews]
    assert not torch.equal(canonical[0], canonical[0].flip(-1))   # the scene is not mirror-symmetric
    assert all(torch.equal(c, canonical[0]) for c in canonical)  # unflipping by the flag gives one picture
    for event in previews:
        assert any(float(event.maps[n].max()) == pytest.approx(1.0) for n, c in enumerate(event.chosen) if c)


def test_same_seed_same_pack_other_seed_other_pack(trained, tmp_path):
    pack, config = trained
    again = train(tiny_components(seed=0), make_scene(), config, device="cpu", cache_dir=str(tmp_path))
    assert again.handles.keys() == pack.handles.keys() and again.lora.keys() == pack.lora.keys()
    for key in pack.handles:
        assert torch.equal(again.handles[key], pack.handles[key])
    for key in pack.lora:
        assert torch.equal(again.lora[key], pack.lora[key]), key
    assert again.meta["losses"] == pack.meta["losses"]

    other = train(tiny_components(seed=0), make_scene(), small_config(train_text_encoder=True, seed=1),
                  device="cpu", cache_dir=str(tmp_path))
    assert not torch.equal(other.handles["clip_l"], pack.handles["clip_l"])
    ups = [k for k in pack.lora if k.endswith(".lora_up")]
    assert any(not torch.equal(other.lora[k], pack.lora[k]) for k in ups)


def test_non_square_scene(tmp_path):
    """A 64x96 picture trains at about 64² pixels with its aspect kept; maps follow the latent grid."""
    scene = make_scene(size=96, concepts=2)
    scene.image, scene.masks = scene.image[:, 16:80, :], scene.masks[:, 16:80, :]      # 64 x 96
    previews = []
    pack = train(tiny_components(seed=0), scene, small_config(phase1_steps=1, phase2_steps=1),
                 TrainCallbacks(on_preview=previews.append, preview_every=1), device="cpu", cache_dir=str(tmp_path))
    height, width = pack.meta["training_size"]
    assert (height, width) == (56, 80)                 # multiples of 8 (VAE x2 times the UNet's x4)
    assert [tuple(e.maps.shape) for e in previews] == [(2, height // 8, width // 8)] * 2
    assert all(e.image.shape == (3, height, width) for e in previews)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_modules_go_to_the_device_as_copies_and_come_back(mode):
    """Modules that move to the training device go as copies: the frozen ones in the compute dtype (the VAE in its
    own), what full mode trains in fp32; afterwards each module has its own (untouched) tensors back. The "meta" device stands in for a
    GPU here."""
    from bas_engine.diffusers_model import DiffusersModel

    c = tiny_components(seed=0)
    before = snapshot(c)
    originals = {p.data_ptr() for m in c.modules() for p in m.parameters()}
    model = DiffusersModel(c)
    model.prepare(torch.device("meta"), torch.bfloat16, small_config(mode=mode), (64, 64))
    try:
        for name, module in (("unet", c.unet), ("vae", c.vae), ("text_encoder", c.text_encoder)):
            dtypes = {p.dtype for p in module.parameters()}
            assert {p.device.type for p in module.parameters()} == {"meta"}, name
            fp32 = name == "vae" or (mode == "full" and name == "unet")
            assert dtypes == ({torch.float32} if fp32 else {torch.bfloat16}), name
    finally:
        model.release()
    assert {p.data_ptr() for m in c.modules() for p in m.parameters()} == originals
    assert_restored(c, before)
