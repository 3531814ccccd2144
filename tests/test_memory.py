"""The memory estimate: gradient checkpointing only where a run would not fit without it, and a size that cannot
fit on a CUDA device is an InputError naming one that fits."""
from __future__ import annotations

import pytest
import torch

from bas_engine.errors import InputError
from bas_engine.memory import activation_bytes, available_bytes, plan_checkpointing

CUDA = torch.device("cuda")          # a device object only: nothing is allocated on it


def needed(height: int, width: int, checkpointing: bool) -> int:
    """A run of the tiny test UNet's widths at that size (4 bytes per element)."""
    return activation_bytes([32, 64], 1, (height // 8) * (width // 8), 1, checkpointing, 4)


def test_estimate_grows_with_pixels_and_shrinks_with_checkpointing():
    assert needed(512, 512, False) == 4 * needed(256, 256, False) > 0
    assert needed(512, 512, True) < needed(512, 512, False)


def test_auto_turns_checkpointing_on_only_where_needed():
    roomy = needed(512, 512, False)
    assert plan_checkpointing(needed, (512, 512), "auto", CUDA, free_bytes=roomy) is False
    tight = needed(512, 512, True)
    assert plan_checkpointing(needed, (512, 512), "auto", CUDA, free_bytes=tight) is True
    assert plan_checkpointing(needed, (512, 512), "on", CUDA, free_bytes=roomy) is True
    assert plan_checkpointing(needed, (512, 512), "off", CUDA, free_bytes=roomy) is False


def test_a_size_that_cannot_fit_names_one_that_does():
    free = needed(512, 512, True)
    with pytest.raises(InputError, match=r"^resolution: training at 2048x2048 needs about .* GiB .* "
                                         r"resolution \d+ would fit$") as info:
        plan_checkpointing(needed, (2048, 2048), "auto", CUDA, free_bytes=free)
    assert info.value.field == "resolution"
    with pytest.raises(InputError, match=r"would fit; gradient checkpointing \(on or auto\) would lower the need"):
        plan_checkpointing(needed, (2048, 2048), "off", CUDA, free_bytes=needed(512, 512, False))


def test_the_cpu_is_never_refused():
    """On the CPU the estimate only decides "auto" (the system may swap); no size is refused."""
    assert plan_checkpointing(needed, (4096, 4096), "off", torch.device("cpu"), free_bytes=1) is False
    assert plan_checkpointing(needed, (4096, 4096), "auto", torch.device("cpu"), free_bytes=1) is True
    assert available_bytes(torch.device("cpu")) > 0


def test_flux_memory_script_prints_every_case(capsys):
    """scripts/flux_memory.py: bf16 / fp8 frozen weights x checkpointing off / on, parts and totals in GiB."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "flux_memory.py")
    spec = importlib.util.spec_from_file_location("flux_memory_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--resolution", "1024", "--rank", "16"])
    lines = capsys.readouterr().out.splitlines()
    assert "11.90B parameters" in lines[0]      # Flux.1 dev: 11.9B
    rows = [line for line in lines if line.startswith(("bf16", "fp8"))]
    assert len(rows) == 4
    from bas_engine.flux_memory import FLUX_DEV, training_memory

    off = training_memory(FLUX_DEV, 1024, 16, False, 2, 2)
    on = training_memory(FLUX_DEV, 1024, 16, True, 2, 2)
    assert on["activations"] < off["activations"] / 10 and on["transformer"] == off["transformer"]
    # without checkpointing phase 2 holds a patched copy of every adapted weight (all but modulation and embedders:
    # ~72 % of the transformer); with it one block's
    assert 0.6 * off["transformer"] < off["patched weights"] < 0.8 * off["transformer"]
    assert on["patched weights"] < off["patched weights"] / 10
    assert rows[0].split()[-1] == "no" and rows[-1].split()[-1] == "yes"
