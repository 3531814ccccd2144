"""`bas bench --matrix`: the engine's own configurations side by side: LoRA and full fine-tuning, each with gradient
checkpointing on and off, s/step and peak memory per phase.

One process per preset builds the model once (random weights in the preset's shapes) and trains it in every
configuration in turn (``train`` leaves it as it was). Each phase: one warm-up step (it also allocates the optimizer
state), then ``steps`` timed steps (the median is reported). Memory: on CUDA ``torch.cuda.max_memory_allocated``
over the timed steps (weights, gradients, optimizer state and activations: everything live on the device); on the
CPU the peak resident memory above the level before the timed steps (activations and what a step allocates). A
configuration that does not fit says so instead of a figure.
"""
from __future__ import annotations

import gc
import json
import time

import torch

from .config import TrainConfig
from .tables import print_rows
from .trainer import TrainingRun

#: preset -> (builder name in bas_engine.testing, default resolution)
PRESETS = {"tiny": ("tiny_components", 64), "tiny-sdxl": ("tiny_sdxl_components", 64),
           "sd15": ("sd15_shaped_components", 512), "sdxl": ("sdxl_shaped_components", 1024)}
#: (mode, gradient checkpointing) of each configuration, in table order
MATRIX = (("lora", "off"), ("lora", "on"), ("full", "off"), ("full", "on"))


def run_matrix(preset: str, device: torch.device, steps: int = 3, resolution: int | None = None) -> list[dict]:
    """One row per configuration: s/step and peak bytes of each phase (or the error that stopped it)."""
    from . import testing

    builder, default_resolution = PRESETS[preset]
    resolution = resolution or default_resolution
    components = getattr(testing, builder)(seed=0)
    scene = testing.synthetic_scene(size=resolution, concepts=3)
    rows = []
    for mode, checkpointing in MATRIX:
        row = {"preset": preset, "resolution": resolution, "mode": mode, "gradient_checkpointing": checkpointing,
               "device": str(device)}
        config = TrainConfig(phase1_steps=steps + 1, phase2_steps=steps + 1, resolution=resolution, mode=mode,
                             gradient_checkpointing=checkpointing, seed=0)
        try:
            with TrainingRun(components, scene, config, device) as run:
                row["weights_dtype"] = str(next(components.unet.parameters()).dtype).removeprefix("torch.")
                for phase in (1, 2):
                    row.update(_phase_figures(run, phase, steps, device))
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
        rows.append(row)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _phase_figures(run: TrainingRun, phase: int, steps: int, device: torch.device) -> dict:
    from .bench import RssSampler

    optimizer = run.start_phase(phase)
    draw = lambda: run.sampler.draw_batch(run.config.batch_size)  # noqa: E731
    run.optimize(optimizer, draw())                                 # warm-up: kernels, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = RssSampler() if device.type == "cpu" else None
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        run.optimize(optimizer, draw())
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else sampler.stop()
    del optimizer
    return {f"phase{phase}_s_per_step": sorted(times)[len(times) // 2], f"phase{phase}_peak_bytes": peak}


def print_matrix(rows: list[dict]) -> None:
    """The table and one JSON line."""
    gib = 2 ** 30
    label = (f"{'preset':<10}{'px':>6}{'mode':>6}{'ckpt':>6}", 28,
             lambda r: f"{r['preset']:<10}{r['resolution']:>6}{r['mode']:>6}{r['gradient_checkpointing']:>6}")
    print_rows(label, [("p1 s/step", 11, lambda r: f"{r['phase1_s_per_step']:.3f}"),
                       ("p2 s/step", 11, lambda r: f"{r['phase2_s_per_step']:.3f}"),
                       ("p1 peak GiB", 13, lambda r: f"{r['phase1_peak_bytes'] / gib:.2f}"),
                       ("p2 peak GiB", 13, lambda r: f"{r['phase2_peak_bytes'] / gib:.2f}")], rows)
    print(json.dumps({"matrix": rows, "torch": torch.__version__}))
