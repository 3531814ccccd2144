"""One source of defaults: the trainer node's setting inputs take default, bounds and help from TrainConfig.

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_settings_source.py
"""
from __future__ import annotations

import dataclasses

import pytest


def _trainer_inputs(bas) -> dict:
    return {item.id: item for item in bas.classes["BreakASceneTrainer"].GET_SCHEMA().inputs}


def test_trainer_defaults_are_train_config_defaults(bas):
    from bas_engine.config import TrainConfig

    training = bas.module("nodes.training")
    inputs = _trainer_inputs(bas)
    defaults = TrainConfig()
    assert set(training.NODE_SETTINGS) <= set(inputs)
    for name in training.NODE_SETTINGS:
        expected = getattr(defaults, name)
        shown = inputs[name].default
        # An optional float (None = auto) is shown as 0 = auto.
        assert shown == (0.0 if expected is None else expected), name


def test_trainer_bounds_are_train_config_bounds(bas):
    from bas_engine.config import setting_info

    training = bas.module("nodes.training")
    inputs = _trainer_inputs(bas)
    for name in training.NODE_SETTINGS:
        info, item = setting_info(name), inputs[name]
        if info["choices"]:
            assert list(item.options) == list(info["choices"]), name
        elif info["min"] is not None:
            ui = training.SETTING_UI.get(name, {})
            assert item.min == ui.get("min", info["min"]), name
            assert item.max == info["max"], name
        assert item.tooltip.lower().startswith(info["help"][:20].lower()), name


def test_trainer_node_errors_name_the_setting_from_the_error_field(bas):
    """make_config maps the engine error's field onto the node input: no message parsing."""
    training = bas.module("nodes.training")
    with pytest.raises(ValueError, match=r"^lora_rank: lora_rank must be between 1 and 256, got 0$"):
        training.make_config({"lora_rank": 0}, num_concepts=2)
    with pytest.raises(ValueError, match=r"^resolution: resolution must be between 64 and 4096, got 100000$"):
        training.make_config({"resolution": 100000}, num_concepts=2)
    config = training.make_config({"phase2_lr": 0.0}, num_concepts=2)
    assert config.phase2_lr is None and config == dataclasses.replace(config)


def test_one_handle_syntax_for_the_cli_and_the_prompt_node(bas):
    """A prompt the engine (CLI, API) accepts is accepted by the Concept Prompt Encoder and the reverse, with the
    same error for an unknown handle."""
    import importlib

    import torch

    # the pack's own copy of the engine (ComfyUI loads it as a package), whose errors the node catches
    BASError = importlib.import_module(f"{bas.package}.bas_engine.errors").BASError
    ConceptPack = importlib.import_module(f"{bas.package}.bas_engine.pack").ConceptPack

    pack = ConceptPack(["<asset0>", "<asset1>"], ["figurine", "bowl"], [None, None],
                       {"clip_l": torch.zeros(2, 8)}, "lora", {"unet.x.lora_down": torch.zeros(1)}, {})
    concepts = bas.module("nodes.types").Concepts(pack, "scene")
    rewrite = bas.module("nodes.prompt").rewrite_prompt
    prompts = ["a photo of <asset0>", "<figurine> next to <asset1>", "(<bowl>:1.2) on a table", "no handle",
               "<lora:style:0.8> and <asset0>", "<asset2> is unknown", "<cat>", "<Figurine>"]
    for prompt in prompts:
        try:
            engine = pack.rewrite_prompt(prompt)
        except BASError as exc:
            with pytest.raises(ValueError) as info:
                rewrite(prompt, concepts)
            assert str(info.value) == f"text: {exc}", prompt
            continue
        node = rewrite(prompt, concepts)
        # the same handles, spelled as the token (engine) or as the embedding (node)
        spelled = engine.replace("<asset0>", " embedding:scene_figurine ").replace("<asset1>", " embedding:scene_bowl ")
        assert node == spelled, prompt
