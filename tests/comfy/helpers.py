"""Helpers of the in-process ComfyUI tests: the two-concept test scene, ComfyUI's progress hook, sampling with a
pack through the nodes, and the same training run through the engine's diffusers path and ComfyUI's model."""
from __future__ import annotations

import gc
import os
from types import SimpleNamespace

import pytest
import torch

import comfy.model_management as mm

from engine_helpers import make_scene

COMFYUI_PATH = os.environ["COMFYUI_PATH"]


def scene_inputs(names: str = "cat, bowl") -> dict:
    """Masked Concept Loader inputs: a smooth random 64 px picture and two side-by-side rectangular masks."""
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear",
                                            align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    masks = torch.zeros(2, 64, 64)
    masks[0, 16:48, 4:30] = 1.0
    masks[1, 16:48, 34:60] = 1.0
    return dict(image=image, concept_names=names, initializers="", masks=masks)


class Hook:
    """ComfyUI's progress-bar hook: records calls; sets the interrupt flag once a step is reached and (with
    ``raise_interrupt``) raises it as the server's hook does (main.py)."""

    def __init__(self, interrupt_at: int | None = None, raise_interrupt: bool = False):
        self.calls = []
        self.interrupt_at = interrupt_at
        self.raise_interrupt = raise_interrupt

    def __call__(self, value, total, preview, prompt_id=None, node_id=None):
        self.calls.append(SimpleNamespace(value=value, total=total, preview=preview, node_id=node_id))
        if self.interrupt_at is not None and value >= self.interrupt_at:
            mm.interrupt_current_processing(True)
            if self.raise_interrupt:
                mm.throw_exception_if_processing_interrupted()

    @property
    def steps(self) -> list[int]:
        return [c.value for c in self.calls if c.preview is None]


def sample_with_pack(bas, run_node, model, clip, concepts, text: str, steps: int = 2) -> torch.Tensor:
    """Handle Injector -> Concept Prompt Encoder -> ComfyUI's KSampler on an 8x8 latent: the latent."""
    import nodes as comfy_nodes

    new_model, new_clip = run_node(bas.classes["HandleInjector"], model=model, clip=clip, concepts=concepts,
                                   strength_model=1.0, strength_clip=1.0).args
    positive = run_node(bas.classes["ConceptPromptEncoder"], clip=new_clip, concepts=concepts, text=text).args[0]
    with torch.inference_mode():
        negative = comfy_nodes.CLIPTextEncode().encode(new_clip, "")[0]
        return comfy_nodes.common_ksampler(new_model, 0, steps, 5.0, "euler", "normal", positive, negative,
                                           {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]


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
