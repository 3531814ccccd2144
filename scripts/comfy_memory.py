"""Memory of the Break-A-Scene Trainer inside a headless ComfyUI: the loaded model's own footprint and the peak above
it while training, for the in-place path (ComfyUI's model trained through its own patching) and for the conversion
path the node used before it (ComfyUI's weights converted into a second, fp32 diffusers copy:
``bas_engine.ldm.components_from_ldm`` + the engine's trainer, exactly what ``nodes/training.py`` did up to commit
b9e9335), side by side in one run.

Each (model, path) runs in its own process with ComfyUI's interpreter, so one cannot inflate the other's figure:

    CPU:  resident memory (RSS) of the process: footprint = after the checkpoint is loaded minus before; the peak
          above it is sampled every 5 ms from the start of the node to its end (malloc_trim first); "during VAE
          encode" is the peak above it while the scene image is VAE-encoded (once, before training: what ComfyUI's own VAE
          Encode takes at that size).
    CUDA: torch.cuda.memory_allocated once ComfyUI has loaded the model (UNet + text encoders) is the footprint;
          the peak above it is max_memory_allocated during the node minus that.

The models are the random-weight test checkpoints that ComfyUI's own detection reads as SD15 (sd15: three UNet
levels) and as an SDXL-family model (sdxl_vega: Segmind Vega's depths, full CLIP-L and OpenCLIP-G), and random
Flux transformers at Flux's widths with fewer blocks (flux: 1 double + 1 single, the test model; flux_d4s8: 4 + 8,
~2.5B parameters), loaded as Load Diffusion Model + DualCLIPLoader + Load VAE do, with small CLIP-L / T5 configs
(tests/comfy/flux_models.py), all built into .cache/test_models on first use. Flux trains only in place (the
conversion path never existed for it); its rows also print what ``bas_engine.flux_memory`` estimates above the
loaded model for that shape (LoRA + Adam + patched weights + activations, gradient checkpointing off / on), beside
the measurement.

    .cache/comfyui-venv/bin/python scripts/comfy_memory.py                       # both models, both paths, 512 px
    .cache/comfyui-venv/bin/python scripts/comfy_memory.py --models sdxl_vega --resolution 1024 --steps 1

Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI = os.environ.get("COMFYUI_PATH") or os.path.join(os.path.dirname(REPO), "shared", "comfyui")
PATHS = ("in-place", "conversion")
#: random Flux transformers by name: (double blocks, single blocks)
FLUX_SHAPES = {"flux": (1, 1), "flux_d4s8": (4, 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15l3,sdxl_vega", help="comma-separated test checkpoints")
    parser.add_argument("--paths", default=",".join(PATHS), help="in-place, conversion or both")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1, help="steps of each phase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.resolution, args.steps, args.threads)))
        return
    rows = []
    for model in args.models.split(","):
        for path in args.paths.split(","):
            if model in FLUX_SHAPES and path != "in-place":
                continue                # Flux was never converted: there is no second path to compare
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", model, path,
                                  "--resolution", str(args.resolution), "--steps", str(args.steps),
                                  "--threads", str(args.threads)], capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                reason = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
                rows.append({"model": model, "path": path, "error": reason[:300]})
                print(f"{model} {path}: failed ({reason[:300]})", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1][len("RESULT "):]))
    print_table(rows, args.resolution, args.steps)
    print(json.dumps({"resolution": args.resolution, "steps_per_phase": args.steps, "rows": rows}))


def print_table(rows: list[dict], resolution: int, steps: int) -> None:
    gib = 2 ** 30
    print(f"Break-A-Scene Trainer in ComfyUI: {resolution} px, {steps}+{steps} steps, LoRA")
    print(f"{'model':<12}{'path':<12}{'device':<8}{'footprint GiB':>15}{'peak above GiB':>16}{'x footprint':>13}"
          f"{'during VAE encode':>19}")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:<12}{row['path']:<12}{'-':<8}{'failed':>15}")
            continue
        ratio = row["peak_above_bytes"] / row["footprint_bytes"]
        encode = row.get("vae_encode_peak_above_bytes")
        estimate = row.get("estimate_above_bytes")
        print(f"{row['model']:<12}{row['path']:<12}{row['device']:<8}{row['footprint_bytes'] / gib:>15.2f}"
              f"{row['peak_above_bytes'] / gib:>16.2f}{ratio:>13.2f}"
              f"{(f'{encode / gib:.2f}' if encode is not None else '-'):>19}"
              + (f"   estimate above: {estimate['off'] / gib:.2f} (checkpointing off), {estimate['on'] / gib:.2f} (on)"
                 if estimate else ""))
    by_model = {}
    for row in rows:
        if "error" not in row:
            by_model.setdefault(row["model"], {})[row["path"]] = row["peak_above_bytes"]
    for model, peaks in by_model.items():
        if len(peaks) == 2 and peaks["in-place"]:
            print(f"{model}: the conversion path needs x{peaks['conversion'] / peaks['in-place']:.2f} the memory "
                  f"above the loaded model that in-place training needs")


# -- one (model, path) in its own process ------------------------------------------------------------------------

def worker(model_name: str, path: str, resolution: int, steps: int, threads: int) -> dict:
    import asyncio
    import ctypes
    import time

    sys.path[:0] = [COMFYUI, os.path.join(REPO, "tests"), REPO]
    import torch

    torch.set_num_threads(threads)
    import utils.extra_config  # noqa: F401  (ComfyUI's utils/ package before anything shadows it)
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    import comfy.model_management as mm
    import comfy.sd
    import folder_paths
    import nodes as comfy_nodes

    from bas_engine.bench import RssSampler
    from comfy_fixtures import cached_checkpoint

    cuda = torch.cuda.is_available()
    trim = (lambda: ctypes.CDLL("libc.so.6").malloc_trim(0)) if not cuda else (lambda: None)
    tmp = os.path.join(REPO, ".cache", "comfy_memory")
    os.makedirs(tmp, exist_ok=True)
    folder_paths.models_dir = tmp
    folder_paths.set_temp_directory(os.path.join(tmp, "temp"))
    assert asyncio.run(comfy_nodes.load_custom_node(REPO)), "ComfyUI could not load the node pack"

    trim()
    sampler = RssSampler()
    before = sampler.baseline
    sampler.stop()
    if model_name in FLUX_SHAPES:
        model, clip, vae = _load_flux(model_name)
    else:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(cached_checkpoint(model_name), output_vae=True,
                                                                    output_clip=True, embedding_directory=None)
    if cuda:
        mm.load_models_gpu([model, clip.patcher], force_full_load=True)
        footprint = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        trim()
        footprint = RssSampler()._rss() - before

    from bas_engine.testing import synthetic_scene

    scene = synthetic_scene(size=resolution, concepts=2)
    encode_peaks = _watch_encoding(path, cuda)
    settings = dict(phase1_steps=steps, phase2_steps=steps, phase1_lr=5e-4, phase2_lr=0.0, mode="lora", lora_rank=16,
                    train_text_encoder=False, attention_loss_weight=0.01, masked_loss=True, union_sampling=True,
                    resolution=resolution, seed=0)
    trim()
    sampler = None if cuda else RssSampler()
    started = time.perf_counter()
    with torch.inference_mode():
        if path == "in-place":
            loader = comfy_nodes.NODE_CLASS_MAPPINGS["MaskedConceptLoader"].PREPARE_CLASS_CLONE({"UNIQUE_ID": "1"})
            bas_scene = loader.execute(image=scene.image.permute(1, 2, 0)[None], concept_names="a, b",
                                       initializers="", masks=scene.masks).args[0]
            trainer = comfy_nodes.NODE_CLASS_MAPPINGS["BreakASceneTrainer"].PREPARE_CLASS_CLONE({"UNIQUE_ID": "2"})
            trainer.execute(model=model, clip=clip, vae=vae, scene=bas_scene, pack_name=f"memory_{model_name}",
                            retrain=True, **settings)
        elif path == "conversion":
            conversion_path(model, clip, vae, scene, settings)
        else:
            raise SystemExit(f"--paths: unknown {path!r}; choose from {', '.join(PATHS)}")
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() - footprint) if cuda else sampler.stop()
    row = {"model": model_name, "path": path, "device": "cuda" if cuda else "cpu", "footprint_bytes": footprint,
           "peak_above_bytes": peak, "vae_encode_peak_above_bytes": max(encode_peaks) if encode_peaks else None,
           "seconds": round(seconds, 1), "threads": threads,
           "memory": "cuda max_memory_allocated above the loaded model" if cuda else
                     "peak RSS above the loaded model, sampled every 5 ms"}
    if model_name in FLUX_SHAPES:
        row["estimate_above_bytes"] = _flux_estimate(model, clip, resolution, settings["lora_rank"])
    return row


def _load_flux(name: str):
    """(MODEL, CLIP, VAE) of the random Flux ``name`` through ComfyUI's own loaders (tests/comfy/flux_models.py)."""
    sys.path.insert(0, os.path.join(REPO, "tests", "comfy"))
    from comfy_fixtures import CACHE
    from flux_models import load_flux, save_flux_files

    double, single = FLUX_SHAPES[name]
    folder = os.path.join(CACHE, "flux-v1" if name == "flux" else f"{name}-v1")    # "flux" is the tests' model
    return load_flux(save_flux_files(folder, double_blocks=double, single_blocks=single))


def _flux_estimate(model, clip, resolution: int, rank: int) -> dict[str, float]:
    """What ``bas_engine.flux_memory`` estimates above the loaded model (LoRA + Adam + activations) for this
    transformer's shape and these text encoders, gradient checkpointing off and on."""
    import torch

    from bas_engine.flux_memory import GIB, FluxShape, training_memory

    net = model.model.diffusion_model
    stage = clip.cond_stage_model
    shape = FluxShape(double_blocks=len(net.double_blocks), single_blocks=len(net.single_blocks),
                      pooled=net.params.vec_in_dim,
                      t5_parameters=sum(p.numel() for p in stage.t5xxl.parameters()),
                      clip_l_parameters=sum(p.numel() for p in stage.clip_l.parameters()))
    element = 2 if model.model.get_dtype() in (torch.bfloat16, torch.float16) else 4
    estimate = {}
    for checkpointing in (False, True):
        parts = training_memory(shape, resolution, rank, checkpointing, element, element, compute_bytes=element)
        estimate["on" if checkpointing else "off"] = (parts["LoRA + Adam"] + parts["patched weights"]
                                                      + parts["activations"]) * GIB
    return estimate


def _watch_encoding(path: str, cuda: bool) -> list[int]:
    """On the CPU: the peak above the loaded model while the scene is VAE-encoded (once, before training; the
    same cost as ComfyUI's own VAE Encode at that size), recorded from the path's model adapter."""
    import importlib

    from bas_engine.bench import RssSampler

    peaks: list[int] = []
    if cuda:
        return peaks
    if path == "in-place":
        import nodes as comfy_nodes

        package = comfy_nodes.NODE_CLASS_MAPPINGS["BreakASceneTrainer"].__module__.rsplit(".nodes.", 1)[0]
        adapter = importlib.import_module(f"{package}.nodes.comfy_model.model").ComfyModel
    else:
        adapter = importlib.import_module("bas_engine.diffusers_model").DiffusersModel
    encode = adapter.encode_pixels
    baseline = RssSampler()._rss()

    def watched(self, pixels):
        sampler = RssSampler()
        try:
            return encode(self, pixels)
        finally:
            sampler.stop()
            peaks.append(sampler.peak - baseline)
    adapter.encode_pixels = watched
    return peaks


def conversion_path(model, clip, vae, scene, settings: dict) -> None:
    """What the Trainer node did before it trained in place: every model unloaded, ComfyUI's weights converted into
    fresh fp32 diffusers/transformers modules, and those trained by the engine."""
    import comfy.model_management as mm
    import torch

    from bas_engine.config import TrainConfig
    from bas_engine.ldm import components_from_ldm
    from bas_engine.trainer import train

    mm.unload_all_models()
    tokenizer = os.path.join(COMFYUI, "comfy", "sd1_tokenizer")
    prediction = "v_prediction" if model.model.model_type.name == "V_PREDICTION" else "epsilon"
    with torch.inference_mode(False):
        state = model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd())
        components = components_from_ldm(state, tokenizer, unet_config=model.model.model_config.unet_config,
                                         prediction_type=prediction)
        del state
        config = TrainConfig(**{k: v for k, v in settings.items() if k != "phase2_lr"})
        train(components, scene, config, device=mm.get_torch_device())


if __name__ == "__main__":
    main()
