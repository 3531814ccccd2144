#!/usr/bin/env python
"""Train a few packs with fixed seeds, and compare two sets: the check that a refactor left results unchanged.

    python scripts/reference_packs.py train OUT_DIR     # tiny LoRA+TE (batch 2), tiny full v-pred, toy model, shared scene
    python scripts/reference_packs.py compare A_DIR B_DIR   # tensor for tensor and header for header; exit 1 on a difference

Run `train` in a worktree of the old commit (PYTHONPATH=that worktree) and in the new one, then `compare`.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_all(out: str) -> None:
    from bas_engine.config import TrainConfig
    from bas_engine.models import load_model
    from bas_engine.pack import save_pack
    from bas_engine.scene import load_scene_dir
    from bas_engine.testing import synthetic_scene, tiny_components
    from bas_engine.trainer import train

    torch.set_num_threads(1)
    os.makedirs(out, exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    small = dict(resolution=64, mixed_precision="no")
    runs = {
        "tiny_lora_te": (lambda: tiny_components(seed=0),
                         TrainConfig(phase1_steps=3, phase2_steps=3, train_text_encoder=True, batch_size=2, **small)),
        "tiny_full": (lambda: tiny_components(seed=0, prediction_type="v_prediction"),
                      TrainConfig(phase1_steps=2, phase2_steps=2, mode="full", train_text_encoder=True, seed=3,
                                  **small)),
        "toy_lora": (lambda: load_model(os.path.join(root, "bas_toyworld", "weights", "toy_sd")),
                     TrainConfig(phase1_steps=2, phase2_steps=2, **small)),
    }
    scene = synthetic_scene(size=96)
    for name, (make, config) in runs.items():
        save_pack(train(make(), scene, config, device="cpu"), os.path.join(out, name + ".safetensors"))
    shared = os.path.join(os.path.dirname(root), "shared", "scenes", "creature")
    if os.path.isdir(shared):
        pack = train(tiny_components(seed=1), load_scene_dir(shared), TrainConfig(phase1_steps=2, phase2_steps=2,
                                                                                  **small), device="cpu")
        save_pack(pack, os.path.join(out, "tiny_creature.safetensors"))
    print(f"wrote {sorted(os.listdir(out))} to {out}")


def compare(a: str, b: str) -> bool:
    from safetensors import safe_open

    same_all = True
    for name in sorted(os.listdir(a)):
        with safe_open(os.path.join(a, name), "pt") as fa, safe_open(os.path.join(b, name), "pt") as fb:
            keys = set(fa.keys())
            tensors = keys == set(fb.keys()) and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in keys)
            header = fa.metadata() == fb.metadata()
        print(f"{name}: tensors {'identical' if tensors else 'DIFFER'} ({len(keys)}), "
              f"header {'identical' if header else 'DIFFERS'}")
        same_all &= tensors and header
    print("ALL IDENTICAL" if same_all else "DIFFERENCES")
    return same_all


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "train":
        train_all(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
    else:
        sys.exit(__doc__)
