"""The fake-tensor simulation of a training step gives the memory and operation count a real run of the same
step has (so `bas bench --simulate` stands in for a device this machine lacks)."""
import pytest
import torch

from bas_engine.config import TrainConfig
from bas_engine.simulate import LiveTensorBytes, fake_tensors, step_figures
from bas_engine.testing import synthetic_scene, tiny_components, tiny_sdxl_components
from bas_engine.trainer import TrainingRun


def test_live_bytes_counts_each_storage_once_until_it_is_freed():
    tracker = LiveTensorBytes()
    with tracker:
        a = torch.empty(1000)           # 4000 bytes
        view = a.view(10, 100)          # the same storage: not counted again
        b = torch.empty(500, dtype=torch.bfloat16)  # 1000 bytes
        assert tracker.current == 5000
        del a, view
        assert tracker.current == 1000  # a's storage freed with its last view
        del b
    assert tracker.current == 0 and tracker.peak == 5000


def _figures(build, fake: bool, **overrides) -> dict:
    config = TrainConfig(phase1_steps=2, phase2_steps=2, resolution=64, seed=0, **overrides)
    scene = synthetic_scene(size=64)  # real: scene validation reads its values
    with fake_tensors() if fake else torch.inference_mode(False):
        with TrainingRun(build(seed=0), scene, config, torch.device("cpu")) as run:
            return {phase: step_figures(run, phase) for phase in (1, 2)}


@pytest.mark.parametrize("build", [tiny_components, tiny_sdxl_components], ids=["sd1", "sdxl"])
@pytest.mark.parametrize("overrides", [{"mode": "lora"}, {"mode": "full", "gradient_checkpointing": True}],
                         ids=["lora", "full-checkpointed"])
def test_simulated_step_has_the_memory_and_operations_of_the_real_step(build, overrides):
    real, simulated = _figures(build, False, **overrides), _figures(build, True, **overrides)
    for phase in (1, 2):
        assert real[phase]["peak_bytes"] > 0 and real[phase]["flops"] > 0
        assert simulated[phase]["flops"] == real[phase]["flops"], phase
        # Equal up to when Python's cycle collector frees the autograd graph's garbage, which depends on how many
        # Python objects each run makes (with collection off the two differ by one 16 kB tensor in phase 1).
        assert simulated[phase]["peak_bytes"] == pytest.approx(real[phase]["peak_bytes"], rel=0.02), phase


def test_simulated_bench_reports_both_configurations(capsys):
    from bas_engine.bench import run_benchmark

    result = run_benchmark("tiny", 64, steps=1, device="cpu", simulated=True)
    assert result["device"] == "simulated" and set(result["peak_bytes"]) == {"engine", "official-equivalent"}
    assert all(t["phase1_s_per_step"] is None for t in result["timings"].values())
    # the official recipe (full fine-tune, fp32, every attention probability kept) needs more of both
    assert result["peak_bytes"]["official-equivalent"] > result["peak_bytes"]["engine"]
    assert result["flops"]["official-equivalent"]["phase2_flops_per_step"] > \
        result["flops"]["engine"]["phase2_flops_per_step"]
    assert "simulated" in capsys.readouterr().out
