"""`bas bench`: seconds per step and peak memory of this engine vs an official-equivalent configuration.

"Official-equivalent" runs the same code with the official recipe's costs put back: every attention
probability of every layer computed and kept (classic attention instead of SDPA), the VAE encoding the
image every step, plain AdamW, a full fine-tune of UNet and text encoder in phase 2, fp32. Timing runs
both configurations in one process with their steps interleaved (same model weights, same seed); peak
memory is measured in a separate process per configuration, so one cannot inflate the other's figure.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import subprocess
import sys
import time

import torch

from .attention import AttentionStore
from .config import TrainConfig
from .diffusers_model import DiffusersModel
from .trainer import TrainingRun

PRESET_RESOLUTION = {"tiny": 64, "sd15": 512, "sdxl": 1024}


class KeepAllProbsProcessor:
    """Classic attention (explicit softmax(QK^T)) that keeps every probability tensor, as the official
    AttentionStore does; the selected layers also fill the capture store for the attention loss."""

    def __init__(self, kept: list, store: AttentionStore, name: str, selected: bool):
        self.kept, self.store, self.name, self.selected = kept, store, name, selected

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **k):
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, None)                 # (B*heads, HW, L)
        self.kept.append(probs)
        columns = self.store.columns
        if self.selected and columns is not None and encoder_hidden_states is not None:
            per_head = probs.view(batch, attn.heads, *probs.shape[1:])[:columns.shape[0]]
            index = columns[:, None, None, :].expand(-1, attn.heads, per_head.shape[2], -1)
            self.store.maps[self.name] = per_head.gather(-1, index).float().mean(1)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


class OfficialEquivalentModel(DiffusersModel):
    """The diffusers adapter with classic attention everywhere, every probability kept (the official AttentionStore)."""

    keep_base_weights = False  # the official code saves the whole model, so it keeps no base copy

    def attention_hooks(self, downscale: int):
        capture = super().attention_hooks(downscale)   # its release puts the caller's processors back
        self.kept: list[torch.Tensor] = []
        unet = self.c.unet
        unet.set_attn_processor({
            name: KeepAllProbsProcessor(self.kept, capture.store, name, name in capture.layers)
            for name in unet.attn_processors})
        return capture


class OfficialEquivalentRun(TrainingRun):
    """TrainingRun with the official implementation's costs (see the module docstring)."""

    def __init__(self, components, scene, config, device, cache_dir=None):
        super().__init__(OfficialEquivalentModel(components), scene, config, device, cache_dir)

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay, foreach=False, fused=False)

    def training_step(self, draws):
        self.model.kept.clear()
        image = self.scene_t.image[None] * 2 - 1
        # The official data loader hands pixels to the VAE every step.
        self.scene_t.posteriors = (self.model.encode_pixels(image), self.model.encode_pixels(image.flip(-1)))
        return super().training_step(draws)


def configurations(device: torch.device, names: list[str] | None = None, preset: str = "tiny"
                   ) -> dict[str, tuple[type, dict]]:
    """The configurations compared (all, or those named): run class and TrainConfig overrides.

    SDXL: "engine" is the SDXL configuration meant for a 12 GB GPU (LoRA, frozen weights in bf16, bf16 autocast,
    gradient checkpointing on; "auto" would decide by the device's free memory); the official-equivalent (full fine-tune of UNet and both text encoders in fp32, about
    56 GB of weights, gradients and AdamW state before any activation) runs only when named in --configs.
    """
    engine = dict(mode="lora", mixed_precision="no")
    official = dict(mode="full", train_text_encoder=True, mixed_precision="no")
    configs = {"engine": (TrainingRun, engine), "official-equivalent": (OfficialEquivalentRun, official)}
    if preset == "sdxl":
        configs["engine"] = (TrainingRun, dict(engine, mixed_precision="bf16", gradient_checkpointing="on"))
        names = names or ["engine"]
    elif device.type == "cuda":
        configs = {"engine-bf16": (TrainingRun, dict(engine, mixed_precision="bf16")), **configs}
    if names:
        unknown = set(names) - set(configs)
        if unknown:
            raise ValueError(f"--configs: unknown {sorted(unknown)}; choose from {list(configs)}")
        configs = {k: v for k, v in configs.items() if k in names}
    return configs


def _components(preset: str, name: str = "engine"):
    from .testing import sd15_shaped_components, sdxl_shaped_components, tiny_components

    if preset == "sdxl":   # the engine's SDXL default keeps the frozen base in bf16; the official code trains fp32
        return sdxl_shaped_components(seed=0, dtype=torch.float32 if name == "official-equivalent" else torch.bfloat16)
    return tiny_components(seed=0) if preset == "tiny" else sd15_shaped_components(seed=0)


def _timed_step(run: TrainingRun, optimizer, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run.optimize(optimizer, run.sampler.draw_batch(run.config.batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(preset: str, resolution: int, steps: int, device: torch.device,
                     names: list[str] | None = None) -> dict[str, dict]:
    """s/step per phase for every configuration, steps interleaved in one process."""
    from .testing import synthetic_scene

    scene = synthetic_scene(size=max(resolution, 64))
    runs = {}
    for name, (cls, overrides) in configurations(device, names, preset).items():
        config = TrainConfig(phase1_steps=steps, phase2_steps=steps, resolution=resolution, seed=0, **overrides)
        # Built from the same seed, so every configuration starts from identical weights.
        runs[name] = cls(_components(preset, name), scene, config, device).__enter__()
    timings = {name: {} for name in runs}
    try:
        for phase in (1, 2):
            optimizers = {name: run.start_phase(phase) for name, run in runs.items()}
            for name, run in runs.items():  # warm-up step, not timed
                _timed_step(run, optimizers[name], device)
            samples = {name: [] for name in runs}
            for _ in range(steps):
                for name, run in runs.items():
                    samples[name].append(_timed_step(run, optimizers[name], device))
            for name in runs:
                ordered = sorted(samples[name])
                timings[name][f"phase{phase}_s_per_step"] = ordered[len(ordered) // 2]
            del optimizers
    finally:
        for run in runs.values():
            run.__exit__(None, None, None)
    return timings


def step_figures_per_configuration(preset: str, resolution: int, device: torch.device,
                                   names: list[str] | None = None, simulated: bool = False,
                                   overrides: dict | None = None) -> dict[str, dict]:
    """simulate.step_figures of both phases for each configuration: operations per step, and with ``simulated``
    also the peak memory, from a run on fake tensors on the CPU (nothing computed, so any preset and resolution
    runs on any machine in about a minute; see simulate.py for what the figure is and is not). ``overrides``:
    TrainConfig settings applied to every configuration (e.g. gradient_checkpointing)."""
    from .simulate import fake_tensors, step_figures
    from .testing import synthetic_scene

    scene = synthetic_scene(size=max(resolution, 64))
    figures = {}
    for name, (cls, settings) in configurations(device, names, preset).items():
        config = TrainConfig(phase1_steps=2, phase2_steps=2, resolution=resolution, seed=0,
                             **{**settings, **(overrides or {})})
        with fake_tensors() if simulated else contextlib.nullcontext():
            with cls(_components(preset, name), scene, config, torch.device("cpu") if simulated else device) as run:
                figures[name] = {phase: step_figures(run, phase, memory=simulated) for phase in (1, 2)}
    return figures


def _operations(figures: dict[str, dict]) -> dict[str, dict]:
    return {name: {f"phase{phase}_flops_per_step": f["flops"] for phase, f in phases.items()}
            for name, phases in figures.items()}


def count_flops(preset: str, resolution: int, device: torch.device, names: list[str] | None = None
                ) -> dict[str, dict]:
    """Floating-point operations of one training step per phase and configuration (forward and backward of
    every matmul, convolution and attention, as torch's FlopCounterMode counts them; elementwise work is not
    counted). The same count on any device: it turns a GPU's throughput into an s/step estimate where no GPU
    was at hand to time one (scripts/batch_throughput.py)."""
    return _operations(step_figures_per_configuration(preset, resolution, device, names))


def simulate(preset: str, resolution: int, device: torch.device, names: list[str] | None = None
             ) -> tuple[dict[str, int], dict[str, dict]]:
    """Peak memory (live tensor bytes, weights included; the larger phase) and operations per step of each
    configuration, on fake tensors."""
    figures = step_figures_per_configuration(preset, resolution, device, names, simulated=True)
    peaks = {name: max(f["peak_bytes"] for f in phases.values()) for name, phases in figures.items()}
    return peaks, _operations(figures)


def peak_memory_worker(preset: str, resolution: int, name: str, device_name: str) -> int:
    """Run two steps of each phase of one configuration; return its peak memory in bytes."""
    from .testing import synthetic_scene

    device = torch.device(device_name)
    cls, overrides = configurations(device, [name], preset)[name]
    config = TrainConfig(phase1_steps=2, phase2_steps=2, resolution=resolution, seed=0, **overrides)
    components, scene = _components(preset, name), synthetic_scene(size=max(resolution, 64))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sampler = RssSampler() if device.type == "cpu" else None
    with cls(components, scene, config, device) as run:
        for phase in (1, 2):
            optimizer = run.start_phase(phase)
            for _ in range(2):
                run.optimize(optimizer, run.sampler.draw_batch(1))
            del optimizer
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return sampler.stop()


class RssSampler:
    """Peak resident memory above the level at start, sampled every few milliseconds from /proc.

    (ru_maxrss cannot be used: building the model's random weights leaves a higher mark than training.)
    """

    def __init__(self, interval: float = 0.005):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.baseline = self.peak = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _loop(self, interval: float) -> None:
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(interval)

    def stop(self) -> int:
        self._running = False
        self._thread.join()
        return max(self.peak, self._rss()) - self.baseline


def peak_memory(preset: str, resolution: int, device: torch.device, names: list[str] | None = None
                ) -> dict[str, int]:
    peaks = {}
    for name in configurations(device, names, preset):
        out = subprocess.run([sys.executable, "-m", "bas_engine.bench", "--worker", name, preset,
                              str(resolution), str(device)], capture_output=True, text=True)
        if out.returncode != 0:    # out of memory (CUDA OOM, or killed by the kernel): it does not fit here
            reason = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            print(f"{name}: does not fit on {device} at {resolution} px ({reason[:200]})", file=sys.stderr)
            peaks[name] = None
            continue
        peaks[name] = int(out.stdout.strip().splitlines()[-1])
    return peaks


def run_benchmark(preset: str, resolution: int | None, steps: int, device: str,
                  names: list[str] | None = None, timing: bool = True, flops: bool = False,
                  simulated: bool = False) -> dict:
    """Print a table and one JSON line; return the figures. ``simulated``: memory and operations from a run on
    fake tensors (no timing), for configurations this machine cannot run (simulate.py)."""
    device = torch.device(device)
    resolution = resolution or PRESET_RESOLUTION[preset]
    names = list(configurations(device, names, preset))
    timing = timing and not simulated
    timings = (time_interleaved(preset, resolution, steps, device, names) if timing
               else {name: {"phase1_s_per_step": None, "phase2_s_per_step": None} for name in names})
    if simulated:
        peaks, counted = simulate(preset, resolution, device, names)
        memory_kind = ("simulated: peak live tensor bytes of a step, weights included, on fake tensors "
                       "(what max_memory_allocated counts; nothing computed)")
    else:
        peaks = peak_memory(preset, resolution, device, names)
        counted = count_flops(preset, resolution, device, names) if flops else {}
        memory_kind = ("cuda max_memory_allocated" if device.type == "cuda" else
                       "peak RSS above the loaded model, sampled every 5 ms (separate process per configuration)")
    how = "no timing" if simulated else f"device={device} timed steps/phase={steps} (median; interleaved)"
    print(f"preset={preset} resolution={resolution} {how} memory={memory_kind}")
    flop_header = f"{'phase1 TFLOP':>14}{'phase2 TFLOP':>14}" if counted else ""
    print(f"{'configuration':<22}{'phase1 s/step':>15}{'phase2 s/step':>15}{'peak MiB':>12}{flop_header}")
    for name, t in timings.items():
        cells = [f"{t[k]:.4f}" if t[k] is not None else "-" for k in ("phase1_s_per_step", "phase2_s_per_step")]
        peak = f"{peaks[name] / 2**20:.0f}" if peaks[name] is not None else "no fit"
        tflop = "".join(f"{counted[name][f'phase{p}_flops_per_step'] / 1e12:>14.3f}" for p in (1, 2)) if counted else ""
        print(f"{name:<22}{cells[0]:>15}{cells[1]:>15}{peak:>12}{tflop}")
    ratios = {}
    engine = "engine-bf16" if "engine-bf16" in timings else "engine"
    if "official-equivalent" in timings and engine in timings:
        reference = timings["official-equivalent"]
        ratios = {f"{k}_speedup": reference[k] / timings[engine][k] for k in reference if timing}
        # A model this small can train inside memory the process already holds: then there is no ratio.
        ratios["memory_ratio"] = (peaks["official-equivalent"] / peaks[engine]
                                  if peaks[engine] and peaks["official-equivalent"] else None)
        memory = (f"x{ratios['memory_ratio']:.2f} less peak memory" if ratios["memory_ratio"]
                  else "memory too small to compare")
        speed = (f"phase1 x{ratios['phase1_s_per_step_speedup']:.2f} faster, "
                 f"phase2 x{ratios['phase2_s_per_step_speedup']:.2f} faster, " if timing else "")
        print(f"{engine} vs official-equivalent: {speed}{memory}")
    result = {"preset": preset, "resolution": resolution, "device": "simulated" if simulated else str(device),
              "steps": None if simulated else steps,
              "timings": timings, "peak_bytes": peaks, "memory": memory_kind, "ratios": ratios,
              **({"flops": counted} if counted else {}),
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        print(peak_memory_worker(sys.argv[3], int(sys.argv[4]), sys.argv[2], sys.argv[5]))
    else:
        sys.exit("usage: python -m bas_engine.bench --worker NAME PRESET RESOLUTION DEVICE (use `bas bench`)")
