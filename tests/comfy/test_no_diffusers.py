"""The node pack's whole path inside ComfyUI needs no diffusers: in a ComfyUI process where importing diffusers
fails, the pack loads, trains ComfyUI's model (both phases, LoRA on the UNet and the text encoder, and full mode),
applies its pack, encodes a prompt with the handles, samples with ComfyUI's KSampler and exports.

    COMFYUI_PATH=/work/shared/comfyui .cache/comfyui-venv/bin/python -m pytest -q tests/comfy/test_no_diffusers.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r'''
import asyncio, json, os, sys

class NoDiffusers:
    """Import finder that makes every diffusers module unimportable."""
    def find_spec(self, name, path=None, target=None):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoDiffusers())
comfy_path, repo, checkpoint = sys.argv[1:4]
sys.path.insert(0, comfy_path)
import torch
import utils.extra_config  # noqa: F401  (ComfyUI's utils/ package first)
import comfy.cli_args
comfy.cli_args.args.cpu = not torch.cuda.is_available()
import comfy.model_management as mm
import comfy.sd
import folder_paths
import nodes as comfy_nodes

root = os.path.join(os.getcwd(), "comfy")    # the test's tmp_path: its packs go when the test passes
for name in ("loras", "embeddings"):
    os.makedirs(os.path.join(root, name))
    folder_paths.folder_names_and_paths[name] = ([os.path.join(root, name)], set(folder_paths.supported_pt_extensions))
folder_paths.models_dir = root
folder_paths.set_temp_directory(os.path.join(root, "temp"))
assert asyncio.run(comfy_nodes.load_custom_node(repo))
classes = comfy_nodes.NODE_CLASS_MAPPINGS

def run(node_id, **inputs):
    clone = classes[node_id].PREPARE_CLASS_CLONE({"UNIQUE_ID": "1"})
    with torch.inference_mode():
        return clone.execute(**inputs).args

with torch.inference_mode():           # as ComfyUI's Load Checkpoint node runs
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True,
                                                                embedding_directory=None)
image = torch.rand(1, 64, 64, 3)
masks = torch.zeros(2, 64, 64)
masks[0, 16:48, 4:30] = 1.0
masks[1, 16:48, 34:60] = 1.0
scene = run("MaskedConceptLoader", image=image, concept_names="cat, bowl", initializers="", masks=masks)[0]
settings = dict(phase1_steps=1, phase2_steps=1, phase1_lr=5e-4, phase2_lr=0.0, lora_rank=4, train_text_encoder=True,
                attention_loss_weight=0.01, masked_loss=True, union_sampling=True, resolution=64, seed=0, retrain=False)
report = {}
for mode in ("lora", "full"):
    concepts = run("BreakASceneTrainer", model=model, clip=clip, vae=vae, scene=scene, pack_name=f"nd_{mode}",
                   mode=mode, **settings)[0]
    new_model, new_clip = run("HandleInjector", model=model, clip=clip, concepts=concepts, strength_model=1.0,
                              strength_clip=1.0)
    positive = run("ConceptPromptEncoder", clip=new_clip, concepts=concepts, text="a photo of <cat> and <asset1>")[0]
    with torch.inference_mode():
        negative = comfy_nodes.CLIPTextEncode().encode(new_clip, "")[0]
        latent = comfy_nodes.common_ksampler(new_model, 0, 1, 5.0, "euler", "normal", positive, negative,
                                             {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    lora_name, embeddings = run("ConceptPackExport", concepts=concepts, name=f"nd_{mode}")
    report[mode] = {"pack": concepts.pack.mode, "finite": bool(torch.isfinite(latent).all()),
                    "lora": lora_name, "embeddings": embeddings}
report["diffusers_imported"] = sorted(m for m in sys.modules if m == "diffusers" or m.startswith("diffusers."))
report["engine_modules"] = sorted(m.rsplit(".bas_engine.", 1)[1] for m in sys.modules if ".bas_engine." in m)
print("REPORT " + json.dumps(report))
'''


def test_the_node_path_runs_without_diffusers(checkpoint_path, tmp_path):
    checkpoint = checkpoint_path("sd15l3")
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run([sys.executable, "-c", SCRIPT, COMFYUI_PATH, REPO, checkpoint], capture_output=True, text=True,
                         timeout=900, cwd=str(tmp_path), env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and lines, out.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["diffusers_imported"] == []
    for mode in ("lora", "full"):
        assert report[mode]["pack"] == mode and report[mode]["finite"], report
        assert report[mode]["embeddings"] == f"embedding:nd_{mode}_cat, embedding:nd_{mode}_bowl"
    assert report["lora"]["lora"] == "nd_lora.safetensors" and report["full"]["lora"] == ""
    # the engine's training loop and the ComfyUI adapter ran; its diffusers modules were never imported
    assert {"trainer", "model_adapter", "attention"} <= set(report["engine_modules"])
    assert not {"diffusers_model", "diffusers_attention", "components", "ldm"} & set(report["engine_modules"])
