"""Toy world for testing Break-A-Scene without real Stable Diffusion weights.

* ``world``     procedural 64x64 scenes of textured shapes, captions, exact masks, novel concepts
* ``tokenizer`` word-level CLIP tokenizer folder for the world's vocabulary
* ``judge``     detector and scores (identity, prompt fidelity, leakage, attention IoU)
* ``model``     tiny SD-1.x-shaped model (VAE, UNet, CLIP text encoder, DDPM scheduler)
* ``preview``   sample grids + judge scores for a trained toy model
* ``extraction`` Break-A-Scene (the engine) on toy scenes: train, generate, score
* ``demo``      ``bas demo``: one scene end to end, HTML report and contact sheet
* ``fidelity``  ``bas fidelity``: the method and its ablations over held-out scenes, mean ± 95 % CI
* ``toy_eval``  ``bas toy-eval``: the base model's shape/colour/texture/background accuracy on held-out captions
* ``weights/toy_sd`` the committed pretrained model (see ``weights/toy_sd/pretrain.json``); the v2 model's
  pretraining run: ``weights/PRETRAIN_V2.md``

``world`` and ``judge`` need only numpy; the others import torch/diffusers (and the engine).
"""
from .world import (  # noqa: F401
    NOVEL_CONCEPTS, Concept, DemoScene, ObjectSpec, Scene, SceneSpec, caption, make_demo_scene,
    make_heldout_scenes, random_spec, render_scene, save_scene_dir,
)
