"""scripts/pretrain_toy.py --world v3 (issue 22): a tiny run end to end with the curriculum and the text warm-up,
its model folders name world v3, and a run stopped and resumed ends as the one that never stopped."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bas_toyworld.worlds import WORLD_FILE, model_world

from test_pretrain_resume import TINY, _close_val, _run, _weights

ROOT = Path(__file__).resolve().parents[2]
V1 = ROOT / "bas_toyworld" / "weights" / "toy_sd"
TINY_V3 = ["--config", "v3", "--world", "v3", "--init-from", str(V1), "--unet-steps", "4", "--batch", "2",
           "--text-warmup", "2", "--curriculum", "1,2,3", "--checkpoint-every", "2", "--val-every", "2"]


def test_v3_run_resumed_equals_uninterrupted(tmp_path):
    out = _run(tmp_path / "full", *TINY_V3)
    assert "[text warm-up]" in out
    full = tmp_path / "full"
    for folder in (full / "model", full / "checkpoint"):
        assert json.loads((folder / WORLD_FILE).read_text()) == {"world": "v3"} and model_world(folder) == "v3"
    log = json.loads((full / "train_log.json").read_text())
    assert log["unet_steps"] == 4 and log["vae_steps"] == 0 and log["text_warmup"]["steps"] == 2
    assert log["args"]["world"] == "v3" and log["args"]["curriculum"] == "1,2,3"
    recipe = json.loads((full / "model" / "pretrain.json").read_text())
    assert "--world v3" in recipe["command"] and "--curriculum 1,2,3" in recipe["command"]
    # stopped after UNet step 2 (inside the curriculum's third stage), resumed: the same weights and losses
    assert "halted after step 2" in _run(tmp_path / "cut", "--halt-at", "2", *TINY_V3)
    resumed_out = _run(tmp_path / "cut", "--resume", *TINY_V3)
    assert "[text warm-up]" not in resumed_out  # the state holds the warmed-up encoder
    a, b = _weights(full / "model"), _weights(tmp_path / "cut" / "model")
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-3
    resumed_log = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert resumed_log["unet_steps"] == 4 and resumed_log["unet_loss"] == pytest.approx(log["unet_loss"], rel=1e-3)
    # the warm-up's log travels in the state. Two processes' encoder outputs on a batch of 64 captions differ by
    # ~4e-5 (CPU kernels depend on memory alignment), so the losses agree to ~1e-3 and an accuracy may differ by
    # an object or two whose logits nearly tie (0.19 against 0.198 seen): accuracies within 0.05.
    for got, want in zip(resumed_log["text_warmup"]["history"], log["text_warmup"]["history"], strict=True):
        assert got.keys() == want.keys() and got["step"] == want["step"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-2)
        assert all(abs(got[k] - want[k]) <= 0.05 for k in ("shape", "colour", "texture", "background"))
    assert _close_val(resumed_log["val"], log["val"])
    assert model_world(tmp_path / "cut" / "model") == "v3"


def test_v3_options_are_checked(tmp_path, capsys, pretrain_script):
    mod = pretrain_script
    for argv, message in ((["--curriculum", "5,x"], "--curriculum: expected increasing step numbers"),
                          (["--curriculum", "5"], "--curriculum is defined for world v3 only"),
                          (["--world", "v3", "--text-warmup", "-1"], "--text-warmup must be 0 or more")):
        with pytest.raises(SystemExit):
            mod.main(["--out", str(tmp_path / "x"), "--unet-steps", "1", "--no-deadline"] + argv)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path / "x"), "--world", "v2"])
    assert "invalid choice: 'v2'" in capsys.readouterr().err


def test_v3_run_continues_from_a_checkpoint_folder(tmp_path):
    """--continue-from: a run whose state.pt was lost goes on from a (committed) checkpoint folder at the step after
    its step.txt, without the text warm-up, and a continued run is itself resumable."""
    import shutil

    _run(tmp_path / "first", *TINY_V3)
    kept = tmp_path / "kept_checkpoint"
    shutil.copytree(tmp_path / "first" / "checkpoint", kept)          # what a session would commit
    assert (kept / "step.txt").read_text() == "2"
    continued = [a for a in TINY_V3 if a not in ("--init-from", str(V1))]

    def run6(out_dir, *extra):  # as _run, 6 UNet steps
        tiny = list(TINY)
        tiny[tiny.index("--unet-steps") + 1] = "6"
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_toy.py"), "--out", str(out_dir),
                               *extra, *continued, *tiny], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    out = run6(tmp_path / "next", "--continue-from", str(kept))
    assert f"continue from {kept} at UNet step 3" in out and "[text warm-up]" not in out
    assert "[unet] 5/6" in out and "[unet] 0/6" not in out   # steps 3-5 ran, none before
    log = json.loads((tmp_path / "next" / "train_log.json").read_text())
    assert log["unet_steps"] == 6 and len(log["unet_loss"]) == 1 and log["vae_steps"] == 0
    assert log["continued_from"]["step"] == 2 and "text_warmup" not in log
    recipe = json.loads((tmp_path / "next" / "model" / "pretrain.json").read_text())
    assert recipe["continued_from"]["step"] == 2 and "--continue-from" in recipe["command"]
    assert model_world(tmp_path / "next" / "model") == "v3"
    start, end = _weights(kept), _weights(tmp_path / "next" / "model")
    assert any((start[k].float() - end[k].float()).abs().max().item() > 0 for k in start if k.startswith("unet"))
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith("vae"))  # the VAE stays as it was
    # stopped inside the continued run and resumed from its state: it finishes as a continued run
    assert "halted after step 4" in run6(tmp_path / "cut", "--continue-from", str(kept), "--halt-at", "4")
    run6(tmp_path / "cut", "--continue-from", str(kept), "--resume")
    cut_log = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert cut_log["unet_steps"] == 6 and cut_log["continued_from"] == log["continued_from"]
    assert cut_log["unet_loss"] == pytest.approx(log["unet_loss"], rel=1e-3)


def test_continue_from_refuses_what_it_cannot_continue(tmp_path, capsys, pretrain_script):
    not_a_checkpoint = tmp_path / "model"
    not_a_checkpoint.mkdir()
    v1_checkpoint = tmp_path / "v1_checkpoint"
    v1_checkpoint.mkdir()
    (v1_checkpoint / "step.txt").write_text("500")                    # no toy_world.json: a v1 folder
    base = ["--out", str(tmp_path / "x"), "--world", "v3", "--config", "v3", "--unet-steps", "4", "--no-deadline"]
    for extra, message in (
            (["--continue-from", str(not_a_checkpoint)], "not a pretraining checkpoint (no step.txt"),
            (["--continue-from", str(v1_checkpoint)], "a world v1 checkpoint, this run is --world v3"),
            (["--continue-from", str(v1_checkpoint), "--init-from", str(V1)], "--init-from goes without it")):
        with pytest.raises(SystemExit):
            pretrain_script.main(base + extra)
        assert message in capsys.readouterr().err
