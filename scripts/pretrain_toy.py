#!/usr/bin/env python
"""Pretrain the toy Stable-Diffusion-shaped model on the procedural world, from scratch, on CPU.

    python scripts/pretrain_toy.py --out runs/toy_sd --seed 0 --minutes 40

Phase 1 trains the VAE for reconstruction (~20% of the time), phase 2 the UNet and the text
encoder together on captioned scenes (epsilon loss with min-SNR-5 weighting times a capped
(1 + 1/snr) boost of noisy steps, 10% empty captions for classifier-free guidance; EMA weights are
what gets saved). train_log.json records a text-conditioning gap on fixed validation scenes and a shape gap on
fixed one-object scenes (does naming another shape change the denoising loss?). The result is a diffusers
StableDiffusionPipeline folder in fp16 (v1 ~23.5 MB, v2 ~36.6 MB) plus train_log.json and preview.png in --out.

Step counts come from --minutes through fixed nominal step times (measured on this 2-core CPU),
so a given seed and --minutes always plan the same run; the wall-clock deadline only cuts a run
short when the machine is slower than planned (then train_log.json says so).

Long runs (--config v2, hours) are resumable: with --state-minutes / --state-every the whole training state
(models, EMA, optimizer, every random generator, the scene stream's position, the step, the log) is written
atomically to OUT/state.pt, and `--resume` continues from it exactly as if the run had not stopped (same
losses, same weights). Use --no-deadline with explicit --vae-steps/--unet-steps for such runs: a wall-clock
cut depends on the machine, the step counts do not. Where the state is lost with the machine that held it (it is
too large for git), `--continue-from CHECKPOINT_DIR` goes on from a checkpoint folder's EMA weights at its step, with
a new optimizer and random streams: close to the run that wrote it, not the same.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bas_engine.fileio import atomic_write_text  # noqa: E402
from bas_toyworld.model import (  # noqa: E402
    TOY_CONFIGS, build_scheduler, build_text_encoder, build_unet, build_vae, param_count, save_pipeline,
    weights_size_mb,
)
from bas_toyworld.tokenizer import build_tokenizer, load_tokenizer  # noqa: E402
from bas_toyworld.curriculum import parse_curriculum, spec_maker  # noqa: E402
from bas_toyworld.pretraining import (  # noqa: E402
    STATE_FILE, Halted, SceneStream, StateSaver, averaged_copies, grow_phase_state, latent_scaling, train_diffusion,
    train_vae, zero_new_attention_outputs,
)
from bas_toyworld.worlds import WORLDS, get_world, write_model_world  # noqa: E402

# Nominal seconds per step with 2 threads on the 2-core dev machine (batch sizes below).
NOMINAL_VAE_STEP_S = 0.30  # batch 8
NOMINAL_UNET_STEP_S = 1.05  # batch 16
VAE_TIME_FRACTION = 0.2  # the VAE is slow to get object colours right
RESERVE_S = 75.0  # saving + preview sampling at the end



def plan(minutes: float) -> tuple[int, int]:
    budget = minutes * 60 - RESERVE_S
    vae_steps = max(1, int(budget * VAE_TIME_FRACTION / NOMINAL_VAE_STEP_S))
    unet_steps = max(1, int(budget * (1 - VAE_TIME_FRACTION) / NOMINAL_UNET_STEP_S))
    return vae_steps, unet_steps


def weights_sha256(model_dir: str | Path, parts: tuple[str, ...]) -> dict[str, str]:
    """sha256 of the safetensors file of each part (``unet``, ``vae``, ``text_encoder``) of a model folder."""
    import hashlib

    return {part: hashlib.sha256(next((Path(model_dir) / part).glob("*.safetensors")).read_bytes()).hexdigest()
            for part in parts}


def load_parts(model_dir: str | Path, option: str, **modules: torch.nn.Module) -> float:
    """Load the named parts (``vae``, ``unet``, ``text_encoder``) of a saved model folder into ``modules`` (strict:
    a ValueError names the part of ``option``'s folder that is not this --config's); the VAE is frozen with the
    folder's latent scaling factor, which is returned."""
    from bas_toyworld.model import load_pipeline

    pipe = load_pipeline(model_dir)
    for name, module in modules.items():
        try:
            module.load_state_dict(getattr(pipe, name).state_dict())
        except RuntimeError as exc:
            raise ValueError(f"{option} {model_dir}: its {name} is not this --config's "
                             f"({str(exc).splitlines()[0]})") from exc
    scaling_factor = float(pipe.vae.config.scaling_factor)
    modules["vae"].eval()
    modules["vae"].register_to_config(scaling_factor=scaling_factor)
    return scaling_factor


def init_from(model_dir: str, vae, text_encoder) -> dict:
    """Load the VAE and the text encoder of a saved model folder of the same world into ``vae`` and
    ``text_encoder`` (same architectures: strict loading names any mismatch). The world is unchanged
    between designs, so a VAE that already reconstructs it needs no second training; the text encoder
    starts from what it learned of the captions. Returns what the log records (and the recipe repeats)."""
    scaling_factor = load_parts(model_dir, "--init-from", vae=vae, text_encoder=text_encoder)
    return {"vae_steps": 0, "vae_scaling_factor": scaling_factor,
            "init_from": {"model": str(model_dir), "weights_sha256": weights_sha256(model_dir, ("vae", "text_encoder"))}}


def continue_from(checkpoint_dir: str, world: str, vae, unet, text_encoder) -> dict:
    """Load a checkpoint folder (OUT/checkpoint, or a copy of it committed when a session had to end) into the
    three models and return what the log records, with the UNet step it was written at. It holds the EMA weights
    only: the run goes on from them with a new optimizer and new random streams, close to but not the same as
    the run that wrote it (``--resume`` from OUT/state.pt is the exact continuation)."""
    from bas_toyworld.worlds import model_world

    folder = Path(checkpoint_dir)
    if not (folder / "step.txt").is_file():
        raise ValueError(f"--continue-from {checkpoint_dir}: not a pretraining checkpoint (no step.txt; "
                         "OUT/checkpoint folders have one)")
    checkpoint_world = model_world(folder)
    if checkpoint_world != world:
        raise ValueError(f"--continue-from {checkpoint_dir}: a world {checkpoint_world} checkpoint, "
                         f"this run is --world {world}")
    scaling_factor = load_parts(folder, "--continue-from", vae=vae, unet=unet, text_encoder=text_encoder)
    step = int((folder / "step.txt").read_text())
    return {"vae_steps": 0, "vae_scaling_factor": scaling_factor,
            "continued_from": {"model": str(folder), "step": step,
                               "weights_sha256": weights_sha256(folder, ("unet", "vae", "text_encoder"))}}


def write_recipe(model_dir: Path, log: dict, argv: list[str]) -> None:
    """pretrain.json beside the weights: the command and seed that made them, what came out, and the
    weights' sha256, so a committed model says how to reproduce it."""
    import platform
    import shlex

    args = [x for x in argv if x != "--resume"]
    if "--halt-at" in args:
        i = args.index("--halt-at")
        del args[i:i + 2]
    if "--out" in args:  # the output folder is the reader's choice
        i = args.index("--out")
        args[i + 1] = "OUT"
    if "unet_truncated_at" in log and "--unet-stop-at" not in args:
        # The deadline cut this run: the same weights need the same cut, wherever the machine is faster.
        args += ["--unet-stop-at", str(log["unet_truncated_at"])]
    digests = weights_sha256(model_dir, ("unet", "vae", "text_encoder"))
    recipe = {
        "command": "python scripts/pretrain_toy.py " + " ".join(shlex.quote(a) for a in args),
        "seed": log["args"]["seed"], "args": log["args"], "machine": f"{platform.machine()}, {log['args']['threads']} threads",
        "vae_steps": log.get("vae_steps"), "unet_steps": log.get("unet_steps"), "planned": log["planned"],
        "truncated": {k: log[k] for k in ("vae_truncated_at", "unet_truncated_at") if k in log},
        "vae_psnr_db": log.get("vae_psnr_db"), "init_from": log.get("init_from"),
        # continued from a checkpoint's EMA weights at that step (new optimizer and streams from there on)
        "continued_from": log.get("continued_from"), "conditioning_gap": log.get("val", [])[-1:],
        "train_minutes": round(log["train_minutes"], 1), "weights_mb": round(log["weights_mb"], 2),
        "weights_sha256": digests, "preview": log.get("preview"),
        # a forked run: the command above up to the step named, then these options changed (--fork --resume)
        "forks": log.get("forks", []),
        "note": "Saved weights are the EMA of the UNet and text encoder; fp16. Runs are deterministic for a "
                "seed and step plan on one machine; another CPU gives close, not bitwise-equal, weights.",
    }
    atomic_write_text(model_dir / "pretrain.json", json.dumps(recipe, indent=1))


#: options that may differ between a run and its --resume (they do not change what is trained)
RESUME_FREE_OPTIONS = ("out", "resume", "state_every", "state_minutes", "halt_at", "checkpoint_every",
                       "preview_seeds", "threads", "device")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", choices=sorted(TOY_CONFIGS), default="v1",
                    help="model design (bas_toyworld.model.TOY_CONFIGS); v1 made the committed weights/toy_sd")
    ap.add_argument("--world", choices=sorted(WORLDS), default="v1",
                    help="toy world version to pretrain on (bas_toyworld.worlds; v3: issue 22's smaller world)")
    ap.add_argument("--curriculum", default=None, metavar="STEPS",
                    help="world v3: UNet steps at which the curriculum's next stages begin (bas_toyworld.curriculum; "
                         "e.g. 600,1200,2000: one solid object on white, then textures on plain backgrounds, then "
                         "all backgrounds, then the whole world)")
    ap.add_argument("--text-warmup", type=int, default=0, metavar="STEPS",
                    help="steps of the text encoder's word-separation warm-up before the UNet phase "
                         "(bas_toyworld.text_warmup; 0 = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--no-deadline", action="store_true",
                    help="never cut the run by wall clock (give --vae-steps and --unet-steps; resumable long runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="torch device to train on (cpu, cuda, cuda:1); data and noise come from CPU generators on any")
    ap.add_argument("--vae-steps", type=int, default=None, help="override the planned count")
    ap.add_argument("--unet-steps", type=int, default=None, help="override the planned count")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--text-lr", type=float, default=3e-4)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--count-weights", type=str, default=None,
                    help="comma-separated P(1..k objects) of pretraining scenes (default the world's 35/30/20/15 %%)")
    ap.add_argument("--high-noise-weight", type=float, default=5.0,
                    help="cap of the extra (1 + 1/snr) loss weight on noisy steps; 1 = plain min-SNR-5")
    ap.add_argument("--high-t-share", type=float, default=0.0,
                    help="share of the UNet's training images whose timestep is drawn from the upper (noisier) half "
                         "of the schedule instead of the whole; 0 = uniform")
    ap.add_argument("--offset-noise", type=float, default=0.0, help="per-channel offset noise strength")
    ap.add_argument("--object-weight", type=float, default=1.0,
                    help="weight of the objects' latent pixels (with a 1-pixel rim) in the UNet loss; 1 = plain")
    ap.add_argument("--unet-stop-at", type=int, default=None,
                    help="end the UNet phase after this many steps without changing the planned schedule "
                         "(reproduces a run that the wall-clock deadline cut short)")
    ap.add_argument("--checkpoint-every", type=int, default=0,
                    help="save the EMA weights so far to OUT/checkpoint every N UNet steps (0 = never)")
    ap.add_argument("--state-every", type=int, default=0,
                    help="write the full training state to OUT/state.pt every N steps (VAE + UNet steps; 0 = never)")
    ap.add_argument("--state-minutes", type=float, default=0.0,
                    help="write the full training state to OUT/state.pt every M minutes of wall clock (0 = never)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from OUT/state.pt (same options as the run that wrote it) exactly where it was")
    ap.add_argument("--fork", action="store_true",
                    help="with --resume: continue from OUT/state.pt with other training options (a new run that "
                         "shares the start; copy the state into a new --out first); the changes go in the log")
    ap.add_argument("--halt-at", type=int, default=None,
                    help="stop after writing the state at this global step, as if interrupted (tests of --resume)")
    ap.add_argument("--val-every", type=int, default=200,
                    help="UNet steps between validation measurements (conditioning and shape gaps)")
    ap.add_argument("--preview-seeds", type=int, default=4, help="0 disables the preview grid")
    ap.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                    help="a model folder of the same world (e.g. bas_toyworld/weights/toy_sd): its VAE is used as "
                         "it is (no VAE phase) and its text encoder is the starting point of the text encoder")
    ap.add_argument("--continue-from", default=None, metavar="CHECKPOINT_DIR",
                    help="go on from a checkpoint folder (OUT/checkpoint or a committed copy) at the step after its "
                         "step.txt, with the same options: its EMA weights, a new optimizer and random streams (for "
                         "a run whose state.pt was lost; --resume is the exact continuation)")
    a = ap.parse_args(argv)
    try:
        device = torch.device(a.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        ap.error(f"--device {a.device!r} cannot be used here: {exc}")
    if a.val_every < 1:
        ap.error(f"--val-every must be at least 1, got {a.val_every}")
    if a.text_warmup < 0:
        ap.error(f"--text-warmup must be 0 or more, got {a.text_warmup}")
    try:
        curriculum = parse_curriculum(a.curriculum)
        spec_maker(a.world, None, curriculum)
    except ValueError as exc:
        ap.error(str(exc))
    count_weights = None
    if a.count_weights:
        try:
            count_weights = tuple(float(v) for v in a.count_weights.split(","))
        except ValueError:
            ap.error(f"--count-weights: expected numbers like 0.5,0.25,0.15,0.1, got {a.count_weights!r}")
        if any(w < 0 for w in count_weights) or sum(count_weights) <= 0:
            ap.error(f"--count-weights: weights must be >= 0 with a positive sum, got {a.count_weights!r}")
    if a.fork and not a.resume:
        ap.error("--fork continues a run's state with other options: give --resume too (and a copy of the state in "
                 "the new --out)")
    if not 0.0 <= a.high_t_share <= 1.0:
        ap.error(f"--high-t-share is a share between 0 and 1, got {a.high_t_share}")
    if a.object_weight <= 0:
        ap.error(f"--object-weight must be above 0, got {a.object_weight}")
    if a.continue_from and a.init_from:
        ap.error("--continue-from takes all three models from the checkpoint folder: --init-from goes without it")
    if a.no_deadline and ((a.vae_steps is None and not (a.init_from or a.continue_from)) or a.unet_steps is None):
        ap.error("--no-deadline needs --vae-steps and --unet-steps (the plan from --minutes assumes a deadline)")

    start = time.time()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if a.resume:
        if not (out / STATE_FILE).is_file():
            ap.error(f"--resume: no training state at {out / STATE_FILE}")
        state = torch.load(out / STATE_FILE, weights_only=False, map_location="cpu")
        before = state["log"]["args"]
        # an option added after the state was written reads as its default, which reproduces the old behaviour
        differ = [k for k in vars(a) if k not in RESUME_FREE_OPTIONS + ("fork",)
                  and before.get(k, ap.get_default(k)) != getattr(a, k)]
        if differ and a.fork:
            forked = {k: [before.get(k, ap.get_default(k)), getattr(a, k)] for k in differ}
            print(f"fork of the run in {out / STATE_FILE}: " + ", ".join(f"--{k.replace('_', '-')} {v[0]!r} -> {v[1]!r}"
                                                                        for k, v in forked.items()), flush=True)
        if "config" in differ and a.fork:
            was, now = TOY_CONFIGS[before.get("config", "v1")], TOY_CONFIGS[a.config]
            kept = {"prediction_type": was.prediction_type, "zero_terminal_snr": was.zero_terminal_snr,
                    "text_at_top": was.text_at_top}
            if replace(now, **kept) != was or (was.text_at_top and not now.text_at_top):
                ap.error(f"--fork --config {a.config}: the state holds a {before.get('config', 'v1')!r} model of "
                         "another architecture; a fork may change only the schedule (prediction type, zero SNR) "
                         "and add cross-attention at the top level")
        if differ and not a.fork:
            ap.error("--resume: options differ from the run that wrote the state: " + ", ".join(
                f"--{k.replace('_', '-')} {before.get(k)!r} there, {getattr(a, k)!r} here" for k in differ))
    vae_steps, unet_steps = plan(a.minutes)
    vae_steps = 0 if (a.init_from or a.continue_from) else (a.vae_steps or vae_steps)
    unet_steps = a.unet_steps or unet_steps
    end = None if a.no_deadline else start + a.minutes * 60 - RESERVE_S
    cfg = TOY_CONFIGS[a.config]
    log: dict = {"args": vars(a), "argv": list(sys.argv[1:] if argv is None else argv), "config": cfg.to_dict(),
                 "planned": {"vae_steps": vae_steps, "unet_steps": unet_steps}}
    print(f"plan: {a.config}, vae {vae_steps} steps, unet {unet_steps} steps, {a.threads} threads", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tokenizer(tmp))
    vae, unet = build_vae(cfg), build_unet(cfg)
    text_encoder = build_text_encoder(cfg, tokenizer)
    scheduler = build_scheduler(cfg)
    log["params"] = {"vae": param_count(vae), "unet": param_count(unet), "text_encoder": param_count(text_encoder)}
    phase, seconds_before, start_step = "vae", 0.0, 0
    if a.continue_from and state is None:
        try:
            log.update(continue_from(a.continue_from, a.world, vae, unet, text_encoder))
        except (ValueError, OSError) as exc:
            ap.error(str(exc))
        phase, start_step = "unet", log["continued_from"]["step"] + 1
        print(f"continue from {a.continue_from} at UNet step {start_step}", flush=True)
    stream = SceneStream(a.seed, count_weights, a.world, curriculum, start=start_step)
    if a.init_from and state is None:
        phase = "unet"
        try:
            log.update(init_from(a.init_from, vae, text_encoder))
        except ValueError as exc:
            ap.error(str(exc))
        print(f"init from {a.init_from}: VAE (scaling_factor {log['vae_scaling_factor']:.4f}) and text encoder",
              flush=True)
    if state is None and a.text_warmup and not a.continue_from:  # a checkpoint's encoder is past its warm-up
        # before the UNet phase; on generators of its own, so a run's other random streams are as without it. A kill
        # during it leaves no state: the rerun starts over (it is minutes).
        from bas_toyworld.text_warmup import warm_up_text_encoder

        log["text_warmup"] = warm_up_text_encoder(text_encoder.to(device), tokenizer, get_world(a.world),
                                                  a.text_warmup, a.seed)
    if state is not None:
        grown = set(unet.state_dict()) - set(state["unet"])
        for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
            module.load_state_dict(state[name], strict=name != "unet" or not grown)
        if grown:  # a fork that added attention blocks: they start as the identity, the rest as it was
            old_names = [n for n, _ in unet.named_parameters() if n not in grown]
            zero_new_attention_outputs(unet, grown)
            if state["phase"] == "unet":
                state["phase_state"] = grow_phase_state(state["phase_state"], old_names, unet, text_encoder)
            print(f"fork grew the UNet by {len(grown)} tensors ({sum(unet.state_dict()[k].numel() for k in grown)} "
                  "values), started as the identity", flush=True)
        stream.set_state(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        log, phase, seconds_before = state["log"], state["phase"], state["train_seconds"]
        log["config"] = cfg.to_dict()  # a fork may change the design (v2 -> v2v: same UNet, other schedule)
        if a.fork and differ:
            log.setdefault("forks", []).append({"at_step": state["phase_state"]["step"], "phase": phase,
                                                "changed": forked})
            log["args"] = vars(a)
        print(f"resumed from {out / STATE_FILE}: {phase} phase, step {state['phase_state']['step']}", flush=True)

    for module in (vae, unet, text_encoder):
        module.to(device)
    saver = StateSaver(out / STATE_FILE, a.state_every, a.state_minutes, a.halt_at) if (
        a.state_every or a.state_minutes or a.halt_at is not None) else None

    def common_state(phase_name: str, phase_state: dict) -> dict:
        """Everything a resumed run needs besides the phase's own optimizer/EMA/generators."""
        return {"phase": phase_name, "phase_state": phase_state, "log": log, "stream": stream.state(),
                "torch_rng": torch.get_rng_state(), "train_seconds": seconds_before + time.time() - start,
                "vae": vae.state_dict(), "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict()}

    try:
        if phase == "vae":
            vae_deadline = None if end is None else start + (end - start) * VAE_TIME_FRACTION * 1.15  # slack, then cut
            train_vae(vae, stream, vae_steps, a.vae_batch, a.vae_lr, vae_deadline, log, saver, common_state,
                      state["phase_state"] if state is not None else None)
            vae.requires_grad_(False)
            sf, psnr = latent_scaling(vae, stream)
            vae.register_to_config(scaling_factor=sf)
            log["vae_scaling_factor"], log["vae_psnr_db"] = sf, psnr
            print(f"vae: scaling_factor {sf:.4f}, reconstruction PSNR {psnr:.1f} dB", flush=True)
        else:
            vae.eval()
            vae.requires_grad_(False)
            vae.register_to_config(scaling_factor=log["vae_scaling_factor"])

        def checkpoint(ema: EMAModel, step: int) -> None:
            """The EMA weights so far as a model folder (OUT/checkpoint, swapped in whole)."""
            u, t = averaged_copies(ema, [unet, text_encoder])
            tmp_dir, final = out / ".checkpoint.tmp", out / "checkpoint"
            shutil.rmtree(tmp_dir, ignore_errors=True)
            save_pipeline(tmp_dir, vae, u, t, tokenizer, scheduler)
            write_model_world(tmp_dir, a.world)
            (tmp_dir / "step.txt").write_text(str(step))
            old = out / ".checkpoint.old"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp_dir, final)
            shutil.rmtree(old, ignore_errors=True)

        ema = train_diffusion(unet, text_encoder, vae, tokenizer, scheduler, stream, unet_steps, a.batch, a.lr,
                              a.text_lr, end, a.seed, log, offset_noise=a.offset_noise,
                              high_noise_weight=a.high_noise_weight, object_weight=a.object_weight,
                              high_t_share=a.high_t_share,
                              checkpoint=checkpoint,
                              checkpoint_every=a.checkpoint_every, stop_at=a.unet_stop_at, saver=saver,
                              common_state=common_state, step_offset=log["vae_steps"],
                              resume=state["phase_state"] if state is not None and phase == "unet" else None,
                              val_every=a.val_every, world=a.world, start_step=start_step)
    except Halted as halted:
        print(f"halted after step {halted.args[0]} (--halt-at); continue with --resume", flush=True)
        return {"halted_at": halted.args[0]}
    ema.copy_to([p for m in (unet, text_encoder) for p in m.parameters()])
    model_dir = out / "model"
    save_pipeline(model_dir, vae, unet, text_encoder, tokenizer, scheduler)
    write_model_world(model_dir, a.world)
    log["weights_mb"] = weights_size_mb(model_dir)
    log["train_minutes"] = (seconds_before + time.time() - start) / 60
    if a.preview_seeds > 0:
        from bas_toyworld.model import load_pipeline
        from bas_toyworld.preview import preview

        log["preview"] = preview(load_pipeline(model_dir), out / "preview.png", n_seeds=a.preview_seeds, steps=25,
                                 world=a.world)
    log["total_minutes"] = (seconds_before + time.time() - start) / 60
    atomic_write_text(out / "train_log.json", json.dumps(log, indent=1))
    write_recipe(model_dir, log, log["argv"])
    print(f"saved {model_dir} ({log['weights_mb']:.1f} MB) in {log['total_minutes']:.1f} min", flush=True)
    return log


if __name__ == "__main__":
    main()
