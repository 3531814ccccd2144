"""Peak memory of one Break-A-Scene training step on the full-size SDXL architecture (random weights).

The default SDXL configuration: LoRA (rank 16) on the UNet, handles in both text encoders, the frozen base
weights in bf16, bf16 autocast, gradient checkpointing on (what a 12 GB GPU needs; `auto` decides by the
device's free memory), attention loss on, batch 1,
1024 px. It runs a phase-2 step (handles + UNet LoRA: the phase with the most trainable state; the forward
and backward passes are those of phase 1) after its warm-up, and prints the peak:

    CUDA: torch.cuda.max_memory_allocated during the step (weights included);
    CPU:  peak resident memory of the process during the step, sampled every 5 ms (weights, runtime and
          activations), after malloc_trim has handed back what setup freed (the VAE encoding of the scene at
          1024 px, done once per run, is not part of a step).

    python scripts/sdxl_memory.py                       # CUDA when available, else CPU (see below)
    python scripts/sdxl_memory.py --device cpu --threads 2 --resolution 1024
    python scripts/sdxl_memory.py --simulate            # no device: the same step on fake tensors (~1 min)

On a CPU without bf16 arithmetic (AVX2 only) bf16 is emulated at ~0.2-1 GFLOP/s and the step (~17 TFLOP) would
take about a day; there `--simulate` runs the same step on fake tensors (bas_engine/simulate.py): the peak of
live tensor bytes, weights included, which is what max_memory_allocated counts, and the step's operations.

Prints one human line and one JSON line.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bas_engine.bench import RssSampler  # noqa: E402
from bas_engine.config import TrainConfig  # noqa: E402
from bas_engine.testing import sdxl_shaped_components, synthetic_scene  # noqa: E402
from bas_engine.trainer import TrainingRun  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--phase", type=int, choices=(1, 2), default=2, help="which phase's step to measure")
    parser.add_argument("--simulate", action="store_true",
                        help="no computation: both phases' peaks and operations from the step on fake tensors")
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="the figure without gradient checkpointing (on by default here: the 12 GB configuration)")
    args = parser.parse_args()
    if args.simulate:
        return simulated(args.resolution, not args.no_gradient_checkpointing)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    started = time.perf_counter()
    components = sdxl_shaped_components(seed=0, dtype=torch.bfloat16)
    scene = synthetic_scene(size=args.resolution, concepts=3)
    config = TrainConfig(phase1_steps=1, phase2_steps=1, resolution=args.resolution, mode="lora",
                         mixed_precision="bf16", seed=0,
                         gradient_checkpointing="off" if args.no_gradient_checkpointing else "on")
    built = time.perf_counter() - started
    with TrainingRun(components, scene, config, device) as run:
        checkpointing = components.unet.is_gradient_checkpointing
        optimizer = run.start_phase(args.phase)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            sampler = None
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            sampler = RssSampler()
        step_started = time.perf_counter()
        losses = run.optimize(optimizer, run.sampler.draw_batch(1))
        step_seconds = time.perf_counter() - step_started
        if sampler:
            sampler.stop()

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        kind = "torch.cuda.max_memory_allocated (weights included)"
    else:
        peak = sampler.peak
        kind = "peak RSS of the process during the step, sampled every 5 ms (weights, runtime and activations)"
    result = {"resolution": args.resolution, "device": str(device), "phase": args.phase,
              "gradient_checkpointing": checkpointing, "weights_dtype": "bfloat16", "autocast": "bfloat16",
              "mode": "lora", "lora_rank": config.lora_rank, "training_size": list(run.scene_t.size),
              "peak_bytes": peak, "peak_GiB": round(peak / 2**30, 2), "memory": kind,
              "rss_before_step_GiB": round(sampler.baseline / 2**30, 2) if sampler else None,
              "loss": float(losses["loss"]), "step_seconds": round(step_seconds, 1),
              "build_seconds": round(built, 1), "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"SDXL-shaped (random weights), {args.resolution} px, phase {args.phase} step, LoRA, bf16, "
          f"gradient checkpointing {'on' if checkpointing else 'off'}: peak {peak / 2**30:.2f} GiB ({kind})")
    print(json.dumps(result))


def simulated(resolution: int, checkpointing: bool) -> None:
    """The default SDXL step at ``resolution`` on fake tensors (`bas bench --preset sdxl --simulate`'s engine
    configuration): peak live bytes and operations per phase."""
    from bas_engine.bench import step_figures_per_configuration

    figures = step_figures_per_configuration("sdxl", resolution, torch.device("cpu"), ["engine"], simulated=True,
                                             overrides={"gradient_checkpointing": "on" if checkpointing else "off"}
                                             )["engine"]
    result = {"resolution": resolution, "device": "simulated (fake tensors)", "gradient_checkpointing": checkpointing,
              "weights_dtype": "bfloat16", "autocast": "bfloat16", "mode": "lora", "lora_rank": TrainConfig().lora_rank,
              "memory": "peak live tensor bytes during a step, weights included (what max_memory_allocated counts)",
              **{f"phase{p}_peak_GiB": round(f["peak_bytes"] / 2**30, 2) for p, f in figures.items()},
              **{f"phase{p}_peak_bytes": f["peak_bytes"] for p, f in figures.items()},
              **{f"phase{p}_flops_per_step": f["flops"] for p, f in figures.items()}, "torch": torch.__version__}
    print(f"SDXL-shaped, {resolution} px, LoRA, bf16, gradient checkpointing {'on' if checkpointing else 'off'}, "
          f"simulated: peak phase 1 {result['phase1_peak_GiB']:.2f} GiB, phase 2 {result['phase2_peak_GiB']:.2f} GiB "
          f"({figures[1]['flops'] / 1e12:.1f} / {figures[2]['flops'] / 1e12:.1f} TFLOP per step)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
