"""The benchmark runs both configurations side by side and reports figures for each (no timing asserts)."""
import json

from bas_engine.bench import OfficialEquivalentRun, configurations, run_benchmark


def test_bench_tiny_reports_both_configurations(capsys):
    result = run_benchmark("tiny", 64, steps=1, device="cpu")
    assert set(result["timings"]) == {"engine", "official-equivalent"}
    for figures in result["timings"].values():
        assert figures["phase1_s_per_step"] > 0 and figures["phase2_s_per_step"] > 0
    assert set(result["peak_bytes"]) == {"engine", "official-equivalent"}
    assert result["ratios"]["phase1_s_per_step_speedup"] > 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line)["preset"] == "tiny"


def test_official_equivalent_configuration_is_the_official_recipe():
    import torch

    configs = configurations(torch.device("cpu"))
    cls, settings = configs["official-equivalent"]
    assert cls is OfficialEquivalentRun
    assert settings == {"mode": "full", "train_text_encoder": True, "mixed_precision": "no"}
    assert configs["engine"][1]["mode"] == "lora"


def test_flop_count_of_a_step_per_phase_and_configuration():
    import torch

    from bas_engine.bench import count_flops

    flops = count_flops("tiny", 64, torch.device("cpu"))
    engine, official = flops["engine"], flops["official-equivalent"]
    assert all(v > 0 for v in engine.values()) and set(engine) == {"phase1_flops_per_step", "phase2_flops_per_step"}
    # The official recipe also encodes the image every step and computes every frozen weight's gradient in
    # phase 2 (full fine-tune): more operations in both phases, never fewer.
    assert official["phase1_flops_per_step"] > engine["phase1_flops_per_step"]
    assert official["phase2_flops_per_step"] > engine["phase2_flops_per_step"]
    # Twice the side, about four times the pixels: the count follows the resolution.
    assert count_flops("tiny", 128, torch.device("cpu"), ["engine"])["engine"]["phase1_flops_per_step"] > \
        3 * engine["phase1_flops_per_step"]


def test_matrix_reports_every_configuration_and_phase(capsys):
    """`bas bench --matrix`: LoRA and full, checkpointing off and on, s/step and peak of both phases each; the model
    comes back unchanged after every configuration (it is trained in turn by all four)."""
    import torch

    from bas_engine.bench_matrix import MATRIX, print_matrix, run_matrix

    rows = run_matrix("tiny", torch.device("cpu"), steps=1)
    assert [(r["mode"], r["gradient_checkpointing"]) for r in rows] == list(MATRIX)
    for row in rows:
        assert "error" not in row
        assert row["phase1_s_per_step"] > 0 and row["phase2_s_per_step"] > 0
        assert row["phase1_peak_bytes"] >= 0 and row["phase2_peak_bytes"] >= 0
    print_matrix(rows)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(MATRIX) + 1 and json.loads(lines[-1])["matrix"] == rows
