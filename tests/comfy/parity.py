"""The same training run through the engine's diffusers path and through ComfyUI's model in place (tests only)."""
from __future__ import annotations

import gc
import os

import pytest
import torch

from engine_helpers import make_scene

COMFYUI_PATH = os.environ["COMFYUI_PATH"]


def _engine_components(loaded, prediction_type: str):
    """The old conversion path: ComfyUI's weights as fresh diffusers modules (the engine's reference here)."""
    from comfy_fixtures import comfy_tokenizer_dir

    from bas_engine.ldm import components_from_ldm

    state = loaded.model.model.state_dict_for_saving(loaded.clip.get_sd(), loaded.vae.get_sd())
    return components_from_ldm(state, comfy_tokenizer_dir(COMFYUI_PATH),
                               unet_config=loaded.model.model.model_config.unet_config,
                               prediction_type=prediction_type)


def both_paths(bas, loaded, family: str, prediction_type: str, **settings):
    """Train the same scene with the same seed through the engine's diffusers path and through ComfyUI's model in
    place (fp32, 2 + 2 steps): (engine pack, engine losses per step, comfy pack, comfy losses per step)."""
    from bas_engine.callbacks import TrainCallbacks
    from bas_engine.config import TrainConfig
    from bas_engine.trainer import train

    config = dict(phase1_steps=2, phase2_steps=2, resolution=64, lora_rank=4, lora_alpha=2.0, mixed_precision="no",
                  seed=0, **settings)
    scene = make_scene(concepts=2)
    runs = []
    engine_train = train
    comfy_train = bas.module("bas_engine.trainer").train
    comfy_config = bas.module("bas_engine.config").TrainConfig
    ComfyModel = bas.module("nodes.comfy_model").ComfyModel
    for run in ("engine", "comfy"):
        losses = []
        callbacks = TrainCallbacks(on_progress=lambda event: losses.append(event.losses))
        with torch.inference_mode(False):
            if run == "engine":
                components = _engine_components(loaded, prediction_type)
                pack = engine_train(components, scene, TrainConfig(**config), callbacks, device="cpu")
                del components
            else:
                model = ComfyModel(loaded.model, loaded.clip, loaded.vae, family, prediction_type)
                comfy_callbacks = bas.module("bas_engine.callbacks").TrainCallbacks(on_progress=callbacks.on_progress)
                pack = comfy_train(model, scene, comfy_config(**config), comfy_callbacks, device="cpu")
                del model
        gc.collect()
        runs += [pack, losses]
    return runs


def assert_same_training(engine, engine_losses, comfy, comfy_losses, weight_atol: float) -> None:
    assert len(engine_losses) == len(comfy_losses) == 4
    for step, (ours, theirs) in enumerate(zip(engine_losses, comfy_losses)):
        assert ours.keys() == theirs.keys() == {"diffusion", "attention", "loss"}
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (step, key)
    assert engine.handles.keys() == comfy.handles.keys()
    for encoder in engine.handles:
        torch.testing.assert_close(comfy.handles[encoder], engine.handles[encoder], rtol=0, atol=1e-6)
    assert engine.meta["fingerprint"] == comfy.meta["fingerprint"]
    assert sorted(engine.lora) == sorted(comfy.lora) and sorted(engine.deltas) == sorted(comfy.deltas)
    for key in engine.lora:
        torch.testing.assert_close(comfy.lora[key], engine.lora[key], rtol=0, atol=weight_atol)
    for key in engine.deltas:
        torch.testing.assert_close(comfy.deltas[key], engine.deltas[key], rtol=0, atol=weight_atol)
    for key in ("family", "prediction_type", "encoder", "training_size", "attention_downscale", "settings"):
        assert engine.meta[key] == comfy.meta[key], key
