#!/usr/bin/env python
"""Scenes per hour of `bas batch` with 1 and 2 workers (side by side), and what a large batch costs.

    .venv/bin/python scripts/batch_throughput.py                      # toy model, 4 scenes, 400+400 steps
    .venv/bin/python scripts/batch_throughput.py --bench-json bench.json --gpus 1,8,32 --gpu-hour-price 2.5

Measures on this machine, with the committed toy model at its native 64 px:
  1. s/step of each phase on one thread (one scene trained in this process, timed per step);
  2. one `run_batch` per worker count (a fresh local Ray each, one CPU and one torch thread per worker):
     wall time from the call to the last pack, scenes per hour, speed-up over one worker;
  3. the estimate  per-scene time = phase1 steps x s/step + phase2 steps x s/step  and
     wall = ceil(scenes / workers) x per-scene time + start-up (Ray + worker + model load, measured),
     next to the measured wall time, to show how far the estimate is off.
With --bench-json (the JSON line `bas bench` prints, e.g. `bas bench --preset sd15 --device cuda`
on the GPU you will rent), the same formula prints the cost of --batch-scenes scenes on each of --gpus.
Where no GPU is at hand to time, `bas bench --flops` (any device) counts the operations of a step, and
--gpu-tflops (the GPU's dense bf16 peak) with --utilization (the share of it a batch-1 step reaches) turns
them into s/step: an estimate whose uncertainty is the utilization, printed for each value given.
Load from other processes skews the figures: the 1-minute load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def step_seconds(model: str, scene_dir: str, steps: int, resolution: int) -> tuple[float, float]:
    """Median s/step of phase 1 and phase 2 for one scene, in this process."""
    from bas_engine.callbacks import TrainCallbacks
    from bas_engine.config import TrainConfig
    from bas_engine.models import load_model
    from bas_engine.scene import load_scene_dir
    from bas_engine.trainer import train

    import transformers

    transformers.utils.logging.disable_progress_bar()
    stamps: dict[int, list[float]] = {1: [], 2: []}
    components = load_model(model)
    config = TrainConfig(phase1_steps=steps, phase2_steps=steps, resolution=resolution)
    train(components, load_scene_dir(scene_dir), config, TrainCallbacks(
        on_progress=lambda event: stamps[event.phase].append(time.perf_counter())), device="cpu")
    # the first step of a phase also pays its set-up (optimizer, adapters): left out like bench's warm-up
    return tuple(statistics.median(b - a for a, b in zip(t, t[1:])) for t in (stamps[1], stamps[2]))


def measure(scenes_dir: str, model: str, workers: int, p1: int, p2: int, resolution: int) -> dict:
    from bas_engine.batch import run_batch
    from bas_engine.config import TrainConfig

    ready: list[float] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        result = run_batch(scenes_dir, model, out, TrainConfig(phase1_steps=p1, phase2_steps=p2, resolution=resolution),
                           workers=workers, cpus_per_task=1, progress=False,
                           on_event=lambda kind, info: ready.append(time.monotonic() - start)
                           if kind == "worker_ready" else None)
    wall = time.monotonic() - start
    if not result.ok:
        raise SystemExit(f"batch failed: {[r['error'] for r in result.records if r['error']]}")
    seconds = [r["seconds"] for r in result.records]
    return {"workers": result.workers, "wall_s": wall, "startup_s": min(ready), "scenes": len(seconds),
            "train_s_per_scene": statistics.mean(seconds), "scenes_per_hour": len(seconds) / wall * 3600}


def estimate(scenes: int, workers: int, s1: float, s2: float, p1: int, p2: int, startup: float) -> float:
    """Wall seconds for `scenes` on `workers`: rounds of one scene per worker, plus start-up once."""
    return math.ceil(scenes / workers) * (p1 * s1 + p2 * s2) + startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the committed toy model)")
    parser.add_argument("--scenes", type=int, default=4, help="toy scenes per run (default 4)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--phase1-steps", type=int, default=400)
    parser.add_argument("--phase2-steps", type=int, default=400)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--timing-steps", type=int, default=30, help="steps per phase timed for s/step")
    parser.add_argument("--bench-json", help="a file holding the JSON line `bas bench` printed")
    parser.add_argument("--bench-config", help="configuration of the bench JSON to use (default engine-bf16 "
                                               "if present, else engine)")
    parser.add_argument("--batch-scenes", type=int, default=10000, help="scenes of the estimated batch")
    parser.add_argument("--gpus", default="1,8,32", help="GPU counts for the estimate")
    parser.add_argument("--startup-s", type=float, default=120.0,
                        help="start-up for the GPU estimate: Ray, worker, model load (default 120)")
    parser.add_argument("--gpu-hour-price", type=float, help="price of one GPU-hour, for a cost column")
    parser.add_argument("--skip-measure", action="store_true", help="only the estimate from --bench-json")
    parser.add_argument("--gpu-tflops", type=float,
                        help="dense bf16 TFLOP/s of the GPU (e.g. 312 A100, 989 H100 SXM): s/step from the FLOP "
                             "count of `bas bench --flops` instead of the bench's timings")
    parser.add_argument("--utilization", default="0.05,0.15",
                        help="shares of --gpu-tflops a batch-1 step reaches, one estimate each (default 0.05,0.15: see docs/BATCH.md)")
    args = parser.parse_args()

    import torch

    from bas_toyworld.extraction import DEFAULT_MODEL
    from bas_toyworld.world import make_demo_scene, save_scene_dir

    torch.set_num_threads(1)
    model = args.model or str(DEFAULT_MODEL)
    p1, p2 = args.phase1_steps, args.phase2_steps
    if not args.skip_measure:
        counts = [int(w) for w in args.workers.split(",")]
        print(f"machine: {os.cpu_count()} CPUs, 1-minute load average {load_average()} before; model {model}; "
              f"{args.scenes} toy scenes, {p1}+{p2} steps at {args.resolution} px; 1 CPU + 1 torch thread per "
              "worker; a fresh local Ray per run", flush=True)
        with tempfile.TemporaryDirectory() as scenes_dir:
            for seed in range(args.scenes):
                save_scene_dir(make_demo_scene(seed), os.path.join(scenes_dir, f"toy{seed}"))
            s1, s2 = step_seconds(model, os.path.join(scenes_dir, "toy0"), args.timing_steps, args.resolution)
            print(f"s/step on one thread (median of {args.timing_steps}): phase 1 {s1:.4f}, phase 2 {s2:.4f}",
                  flush=True)
            runs = [measure(scenes_dir, model, w, p1, p2, args.resolution) for w in counts]
        base = runs[0]["scenes_per_hour"]
        print(f"\n{'workers':>7} {'wall s':>8} {'start-up s':>10} {'train s/scene':>13} {'scenes/hour':>11} "
              f"{'vs first':>8} {'estimate wall s':>15}")
        for run in runs:
            predicted = estimate(run["scenes"], run["workers"], s1, s2, p1, p2, run["startup_s"])
            print(f"{run['workers']:>7} {run['wall_s']:>8.1f} {run['startup_s']:>10.1f} "
                  f"{run['train_s_per_scene']:>13.1f} {run['scenes_per_hour']:>11.1f} "
                  f"{run['scenes_per_hour'] / base:>7.2f}x {predicted:>15.1f}")
        print(f"1-minute load average after: {load_average()}")
        print(json.dumps({"s_per_step": [s1, s2], "runs": runs}))

    if args.bench_json:
        with open(args.bench_json, encoding="utf-8") as f:
            lines = [line for line in f if line.lstrip().startswith("{")]
        bench = json.loads(lines[-1])
        if args.gpu_tflops:
            if "flops" not in bench:
                raise SystemExit(f"{args.bench_json}: no FLOP count; run `bas bench --flops` for --gpu-tflops")
            name = args.bench_config or ("engine-bf16" if "engine-bf16" in bench["flops"] else "engine")
            f1, f2 = (bench["flops"][name][f"phase{p}_flops_per_step"] for p in (1, 2))
            for share in (float(u) for u in args.utilization.split(",")):
                speed = args.gpu_tflops * 1e12 * share
                gpu_estimate(args, p1, p2, f1 / speed, f2 / speed,
                             f"from the FLOP count of bas bench ({bench['preset']} at {bench['resolution']} px, "
                             f"{name}: {f1 / 1e12:.2f} + {f2 / 1e12:.2f} TFLOP/step) at {share:.0%} of "
                             f"{args.gpu_tflops:g} TFLOP/s")
        else:
            name = args.bench_config or ("engine-bf16" if "engine-bf16" in bench["timings"] else "engine")
            t = bench["timings"][name]
            gpu_estimate(args, p1, p2, t["phase1_s_per_step"], t["phase2_s_per_step"],
                         f"from bas bench ({bench['preset']} at {bench['resolution']} px on {bench['device']}, "
                         f"{name})")


def gpu_estimate(args: argparse.Namespace, p1: int, p2: int, b1: float, b2: float, source: str) -> None:
    """Print wall hours (and GPU-hours, cost) of --batch-scenes scenes on each of --gpus at b1 + b2 s/step."""
    per_scene = p1 * b1 + p2 * b2
    print(f"\n{args.batch_scenes} scenes, {p1}+{p2} steps, {source}: {b1:.4f} + {b2:.4f} s/step, "
          f"{per_scene:.0f} s per scene per worker, start-up {args.startup_s:.0f} s, one worker per GPU")
    price = f" {'cost':>10}" if args.gpu_hour_price else ""
    print(f"{'GPUs':>5} {'wall hours':>10} {'GPU-hours':>10}{price}")
    for gpus in (int(g) for g in args.gpus.split(",")):
        wall = estimate(args.batch_scenes, gpus, b1, b2, p1, p2, args.startup_s)
        cost = f" {wall / 3600 * gpus * args.gpu_hour_price:>10.0f}" if args.gpu_hour_price else ""
        print(f"{gpus:>5} {wall / 3600:>10.1f} {wall / 3600 * gpus:>10.1f}{cost}")

if __name__ == "__main__":
    main()
