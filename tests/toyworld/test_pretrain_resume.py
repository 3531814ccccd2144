"""scripts/pretrain_toy.py --resume: a run stopped after any step and resumed from OUT/state.pt ends with the same
weights and the same log as the run that never stopped."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


TINY = ["--threads", "1", "--vae-steps", "3", "--unet-steps", "4", "--batch", "2", "--vae-batch", "2",
        "--preview-seeds", "0", "--seed", "5", "--no-deadline", "--count-weights", "0.6,0.4"]


def _weights(model_dir: Path) -> dict:
    out = {}
    for sub, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model"), ("vae", "diffusion_pytorch_model")):
        out.update({f"{sub}.{k}": v for k, v in load_file(str(model_dir / sub / f"{name}.safetensors")).items()})
    return out


def _trained(log: dict) -> dict:
    """What training produced (not timings, not the validation diagnostics)."""
    return {k: log[k] for k in ("vae_loss", "unet_loss", "vae_scaling_factor", "vae_psnr_db", "vae_steps", "unet_steps")}


def _close_val(a: list[dict], b: list[dict]) -> bool:
    """The validation log (no-grad forward passes on fixed batches): equal up to float rounding. oneDNN can pick
    an alignment-dependent kernel for a forward pass in a process that has already run other work (seen once:
    1e-4 relative at step 0), which changes no training step."""
    return len(a) == len(b) and all(x.keys() == y.keys() and x["step"] == y["step"] and all(
        abs(x[k] - y[k]) <= 1e-3 * max(1.0, abs(y[k])) for k in x if k != "step") for x, y in zip(a, b))


def _run(out: Path, *extra: str) -> str:
    """The script in a process of its own, as a real (resumed) run is: one process's earlier work cannot change
    which oneDNN kernels the next part uses. Returns what it printed."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_toy.py"), "--out", str(out), *extra, *TINY],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    _run(tmp_path / "full")
    # Stopped inside the VAE phase (global step 2 of 3), then inside the UNet phase (step 5 = UNet step 2 of 4).
    assert "halted after step 2" in _run(tmp_path / "cut", "--halt-at", "2")
    assert not (tmp_path / "cut" / "model").exists() and (tmp_path / "cut" / "state.pt").is_file()
    assert "halted after step 5" in _run(tmp_path / "cut", "--resume", "--halt-at", "5")
    _run(tmp_path / "cut", "--resume", "--state-every", "1")
    # The same weights and training losses as the run that never stopped, up to float rounding: two uninterrupted
    # runs of this command already differ that much on this CPU (fp16 weights up to 1.2e-4 apart; losses 2e-5
    # relative in one pair of runs, 2.1e-4 in a clean-clone CI run on a loaded machine: oneDNN's kernel choice
    # varies between processes), while the resume itself adds nothing. A resume that got any state wrong (a
    # generator, the optimizer, the stream position) changes the losses by percents, far outside 1e-3.
    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "cut" / "model")
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff <= 1e-3, diff
    full, resumed = (json.loads((tmp_path / run / "train_log.json").read_text()) for run in ("full", "cut"))
    got, want = _trained(resumed), _trained(full)
    assert got["vae_steps"] == want["vae_steps"] and got["unet_steps"] == want["unet_steps"]
    for key in ("vae_loss", "unet_loss", "vae_scaling_factor", "vae_psnr_db"):
        assert got[key] == pytest.approx(want[key], rel=1e-3), key
    assert _close_val(resumed["val"], full["val"])
    # No temporary files left beside the state; the recipe is the original command, without --resume/--halt-at.
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["model", "state.pt", "train_log.json"]
    recipe = json.loads((tmp_path / "cut" / "model" / "pretrain.json").read_text())
    assert "--resume" not in recipe["command"] and "--halt-at" not in recipe["command"]
    assert recipe["command"] == json.loads((tmp_path / "full" / "model" / "pretrain.json").read_text())["command"]


def test_resume_refuses_other_options_and_missing_state(tmp_path, capsys, pretrain_script):
    mod = pretrain_script
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path / "none"), "--resume"] + TINY)
    assert "no training state" in capsys.readouterr().err
    assert mod.main(["--out", str(tmp_path / "r"), "--halt-at", "1"] + TINY) == {"halted_at": 1}
    other = [x if x != "5" else "6" for x in TINY]  # another seed
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path / "r"), "--resume"] + other)
    assert "--seed 5 there, 6 here" in capsys.readouterr().err


def test_init_from_takes_the_vae_as_is_and_starts_the_text_encoder_from_it(tmp_path, pretrain_script):
    """--init-from: the VAE of a saved model of the same world is used as it is (no VAE phase) and its text encoder
    is where training starts; the recipe names the model it started from by its weights' sha256."""
    v1 = ROOT / "bas_toyworld" / "weights" / "toy_sd"
    log = pretrain_script.main(["--out", str(tmp_path / "w"), "--config", "v2", "--init-from", str(v1), "--threads", "1",
                                "--unet-steps", "2", "--batch", "2", "--preview-seeds", "0", "--no-deadline"])
    assert log["vae_steps"] == 0 and log["unet_steps"] == 2 and "vae_loss" not in log
    got, base = _weights(tmp_path / "w" / "model"), _weights(v1)
    vae_keys = [k for k in base if k.startswith("vae.")]
    assert vae_keys and all(torch.equal(got[k], base[k]) for k in vae_keys)
    # two steps at the warm-up's first learning rates move the text encoder by little; a fresh one is far away
    text_keys = [k for k in base if k.startswith("text_encoder.")]
    assert max((got[k].float() - base[k].float()).abs().max().item() for k in text_keys) < 0.02
    recipe = json.loads((tmp_path / "w" / "model" / "pretrain.json").read_text())
    assert recipe["init_from"]["weights_sha256"]["vae"] == hashlib.sha256(
        (v1 / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()


def test_object_weighted_mse():
    """The objects' latent pixels and a 1-pixel rim count `weight` times; weight 1 is the plain MSE."""
    from bas_toyworld.pretraining import object_weighted_mse

    pred, target = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    target[:, :, 0, 0] = 1.0                     # error only in a background corner
    objects = torch.zeros(1, 1, 16, 16)
    objects[:, :, 8:10, 8:10] = 1.0              # an object at latent pixel (4, 4): it and its rim are 9 pixels
    plain = object_weighted_mse(pred, target, objects, 1.0)
    assert torch.allclose(plain, torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)))
    weighted = object_weighted_mse(pred, target, objects, 5.0)
    assert torch.allclose(weighted, torch.tensor([1.0 / (64 + 4 * 9)]))  # background error, more total weight
    target.zero_()
    target[:, :, 3, 5] = 1.0                     # error on the rim
    assert torch.allclose(object_weighted_mse(pred, target, objects, 5.0), torch.tensor([5.0 / 100]))


def test_fork_continues_a_state_with_other_options(tmp_path, capsys, pretrain_script):
    """--fork --resume: the same start, other training options from the state's step on, recorded in the log and
    the recipe; without --fork the same change is refused, and --fork alone is an error."""
    mod = pretrain_script
    assert mod.main(["--out", str(tmp_path / "a"), "--halt-at", "4"] + TINY) == {"halted_at": 4}
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path / "a"), "--resume", "--object-weight", "3"] + TINY)
    assert "--object-weight 1.0 there, 3.0 here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path / "b"), "--fork", "--object-weight", "3"] + TINY)
    assert "give --resume too" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "state.pt").write_bytes((tmp_path / "a" / "state.pt").read_bytes())
    log = mod.main(["--out", str(tmp_path / "b"), "--resume", "--fork", "--object-weight", "3"] + TINY)
    assert log["unet_steps"] == 4 and log["forks"] == [{"at_step": 1, "phase": "unet", "changed":
                                                       {"object_weight": [1.0, 3.0]}}]
    recipe = json.loads((tmp_path / "b" / "model" / "pretrain.json").read_text())
    assert recipe["forks"] == log["forks"] and recipe["args"]["object_weight"] == 3.0


def test_fork_may_change_the_schedule_but_not_the_architecture(tmp_path, capsys, pretrain_script):
    """v2 -> v2v (same UNet, v prediction on zero terminal SNR) continues the state and records the new design;
    v2 -> v2t (another UNet) is refused by name instead of failing inside load_state_dict."""
    mod = pretrain_script
    tiny = TINY + ["--config", "v2", "--unet-steps", "2"]
    assert mod.main(["--out", str(tmp_path / "a"), "--halt-at", "4"] + tiny) == {"halted_at": 4}
    for name in ("v", "t"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.pt").write_bytes((tmp_path / "a" / "state.pt").read_bytes())
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path / "t"), "--resume", "--fork"] + tiny[:-4] + ["--config", "v2t", "--unet-steps", "2"])
    assert "may change only the schedule" in capsys.readouterr().err
    log = mod.main(["--out", str(tmp_path / "v"), "--resume", "--fork"] + tiny[:-4] + ["--config", "v2v", "--unet-steps", "2"])
    assert log["forks"][0]["changed"] == {"config": ["v2", "v2v"]}
    assert log["config"]["prediction_type"] == "v_prediction" and log["config"]["zero_terminal_snr"]
    scheduler = json.loads((tmp_path / "v" / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"]


def test_fork_may_grow_attention_at_the_top_level(tmp_path, capsys, pretrain_script):
    """v2v -> v2va adds cross-attention at 32x32: the grown UNet starts computing what the state's did (the new
    blocks are the identity), the old parameters keep their Adam moments and EMA averages, and training goes on."""
    mod = pretrain_script
    tiny = TINY + ["--config", "v2v", "--unet-steps", "3"]
    assert mod.main(["--out", str(tmp_path / "a"), "--halt-at", "5"] + tiny) == {"halted_at": 5}
    state = torch.load(tmp_path / "a" / "state.pt", weights_only=False)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "state.pt").write_bytes((tmp_path / "a" / "state.pt").read_bytes())

    from bas_toyworld.model import TOY_CONFIGS, build_unet
    old, grown = build_unet(TOY_CONFIGS["v2v"]), build_unet(TOY_CONFIGS["v2va"])
    old.load_state_dict(state["unet"])
    new_keys = set(grown.state_dict()) - set(old.state_dict())
    grown.load_state_dict(state["unet"], strict=False)
    mod.zero_new_attention_outputs(grown, new_keys)
    x, t, ctx = torch.randn(2, 4, 32, 32), torch.tensor([10, 900]), torch.randn(2, 40, 768)
    with torch.no_grad():
        assert torch.allclose(grown(x, t, ctx).sample, old(x, t, ctx).sample, atol=1e-6)

    from bas_toyworld.model import build_text_encoder
    from bas_toyworld.tokenizer import build_tokenizer, load_tokenizer

    text_encoder = build_text_encoder(TOY_CONFIGS["v2va"], load_tokenizer(build_tokenizer(tmp_path / "tok")))
    old_names = [n for n, _ in old.named_parameters()]
    phase = mod.grow_phase_state(state["phase_state"], old_names, grown, text_encoder)
    new_names = [n for n, _ in grown.named_parameters()]
    some = old_names[-1]  # the last UNet tensor moves behind the new attention blocks in the grown order
    moved_to, was_at = new_names.index(some), old_names.index(some)
    assert torch.equal(phase["opt"]["state"][moved_to]["exp_avg"], state["phase_state"]["opt"]["state"][was_at]["exp_avg"])
    assert torch.equal(phase["ema"]["shadow_params"][moved_to], state["phase_state"]["ema"]["shadow_params"][was_at])
    fresh = new_names.index(next(n for n in new_names if n not in old_names))
    assert fresh not in phase["opt"]["state"]
    assert len(phase["ema"]["shadow_params"]) == len(new_names) + len(list(text_encoder.parameters()))

    log = mod.main(["--out", str(tmp_path / "g"), "--resume", "--fork"] + tiny[:-4] + ["--config", "v2va", "--unet-steps", "3"])
    assert "grew the UNet" in capsys.readouterr().out
    assert log["unet_steps"] == 3 and log["config"]["text_at_top"]
    assert (tmp_path / "g" / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_an_unusable_device_is_named(tmp_path, capsys, pretrain_script):
    with pytest.raises(SystemExit):
        pretrain_script.main(["--out", str(tmp_path), "--device", "nonsense:7"] + TINY)
    assert "--device 'nonsense:7' cannot be used here" in capsys.readouterr().err
