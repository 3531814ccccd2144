"""`bas` command line: extract concepts from a scene, generate with them, export, benchmark."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .errors import BASError


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",")]


def _add_extract(sub: argparse._SubParsersAction) -> None:
    from .config import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser("extract", help="train handles for the concepts of one scene and write a concept pack")
    p.add_argument("scene_dir", help="folder with img.* and mask0.png, mask1.png, …")
    p.add_argument("--model", required=True, help="diffusers model folder or SD1.x/SD2.x checkpoint file")
    p.add_argument("--tokenizer", help="tokenizer folder (needed for single-file checkpoints)")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                   help="override the model's prediction type (SD2 768-v checkpoints need v_prediction)")
    p.add_argument("--out", required=True, help="concept pack to write (.safetensors)")
    p.add_argument("--names", help="comma-separated concept names, one per mask")
    p.add_argument("--init", help="comma-separated initializer words, one per mask (empty entries allowed)")
    p.add_argument("--tokens", help="comma-separated handle tokens (default <asset0>,<asset1>,…)")
    p.add_argument("--phase1-steps", type=int, default=defaults.phase1_steps)
    p.add_argument("--phase2-steps", type=int, default=defaults.phase2_steps)
    p.add_argument("--phase1-lr", type=float, default=defaults.phase1_lr)
    p.add_argument("--phase2-lr", type=float, default=None, help="default 1e-4 (lora) or 2e-6 (full)")
    p.add_argument("--resolution", type=int, default=defaults.resolution)
    p.add_argument("--mode", choices=["lora", "full"], default=defaults.mode)
    p.add_argument("--lora-rank", type=int, default=defaults.lora_rank)
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--attention-loss-weight", type=float, default=defaults.attention_loss_weight)
    p.add_argument("--no-masked-loss", action="store_true", help="ablation: plain diffusion loss")
    p.add_argument("--no-union-sampling", action="store_true", help="ablation: all concepts every step")
    p.add_argument("--prior-preservation", action="store_true")
    p.add_argument("--class-prompt", default=defaults.class_prompt)
    p.add_argument("--num-class-images", type=int, default=defaults.num_class_images)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cache-dir", help="where class images are cached (default ~/.cache/break_a_scene)")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images with a concept pack")
    p.add_argument("pack")
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"])
    p.add_argument("--prompt", required=True, help='e.g. "an oil painting of <asset1> next to <asset0>"')
    p.add_argument("--negative-prompt")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scale", type=float, default=1.0, help="strength of the pack's LoRA / weight deltas")
    p.add_argument("--size", type=int, help="image side in pixels (default: the pack's training size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=int, default=1)
    p.add_argument("--device", default=None)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a kohya LoRA and one embedding file per handle")
    p.add_argument("pack")
    p.add_argument("--lora", help="LoRA file to write (kohya keys, loads in ComfyUI LoraLoader / diffusers)")
    p.add_argument("--embeddings", help="folder for one <pack>_<concept>.safetensors per handle")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="s/step and peak memory: this engine vs an official-equivalent setup")
    p.add_argument("--preset", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--resolution", type=int, default=None, help="default 64 (tiny) or 512 (sd15)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase and configuration")
    p.add_argument("--device", default=None)
    p.add_argument("--configs", help="comma-separated subset: engine, engine-bf16, official-equivalent "
                                     "(e.g. when the official-equivalent does not fit in memory)")
    p.add_argument("--no-timing", action="store_true",
                   help="only peak memory (one process per configuration): for machines where the "
                        "configurations do not fit in memory together")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the toy world end to end: extract three novel objects, recombine, judge, report")
    p.add_argument("--out", default="out/demo", help="folder for report.html, scores.json, the pack (default out/demo)")
    p.add_argument("--model", help="toy model folder (default: the committed bas_toyworld/weights/toy_sd)")
    p.add_argument("--scene", type=int, default=0, help="seed of the toy scene")
    p.add_argument("--phase1-steps", type=int, default=400)
    p.add_argument("--phase2-steps", type=int, default=400)
    p.add_argument("--mode", choices=["lora", "full"], default="lora")
    p.add_argument("--images", type=int, default=4, help="images per prompt")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def _add_fidelity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fidelity", help="the method and its ablations on held-out toy scenes: mean ± 95%% CI table")
    p.add_argument("--out", default="out/fidelity", help="folder for table.md, results.json and per-run records")
    p.add_argument("--model", help="toy model folder (default: the committed one)")
    p.add_argument("--variants", help="comma-separated subset of: method, no_phase1, no_masked_loss, "
                                      "no_attention_loss, no_union_sampling, full_finetune")
    p.add_argument("--scenes", type=int, default=3, help="held-out scenes (seeds 1..N; the demo uses 0)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per scene")
    p.add_argument("--phase1-steps", type=int, default=400)
    p.add_argument("--phase2-steps", type=int, default=400)
    p.add_argument("--images", type=int, default=2, help="images per prompt")
    p.add_argument("--workers", type=int, default=2, help="parallel runs (processes, one thread each)")


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BASError("--device cuda was asked for, but this torch sees no CUDA device")
    return name


def cmd_extract(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .callbacks import TrainCallbacks
    from .config import TrainConfig
    from .models import load_model
    from .pack import save_pack
    from .scene import load_scene_dir
    from .trainer import train

    scene = load_scene_dir(args.scene_dir, _csv(args.names), _csv(args.init))
    config = TrainConfig(
        phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps, phase1_lr=args.phase1_lr,
        phase2_lr=args.phase2_lr, mode=args.mode, lora_rank=args.lora_rank,
        train_text_encoder=args.train_text_encoder, attention_loss_weight=args.attention_loss_weight,
        masked_loss=not args.no_masked_loss, union_sampling=not args.no_union_sampling,
        resolution=args.resolution, batch_size=args.batch_size, seed=args.seed,
        prior_preservation=args.prior_preservation, class_prompt=args.class_prompt,
        num_class_images=args.num_class_images, gradient_checkpointing=args.gradient_checkpointing,
        mixed_precision=args.mixed_precision, tokens=_csv(args.tokens))
    config.validate(scene.num_concepts)
    device = _device(args.device)
    components = load_model(args.model, args.tokenizer, args.prediction_type)
    total = config.phase1_steps + config.phase2_steps
    with tqdm(total=total, unit="step", file=sys.stderr) as bar:
        def progress(event):
            bar.set_description(f"phase {event.phase}")
            bar.set_postfix({k: f"{v:.4f}" for k, v in event.losses.items()})
            bar.update(1)
        pack = train(components, scene, config, TrainCallbacks(on_progress=progress), device=device,
                     cache_dir=args.cache_dir)
    save_pack(pack, args.out)
    handles = ", ".join(f"{t} = {n}" for t, n in zip(pack.tokens, pack.names))
    print(f"wrote {args.out}: {handles}")


def cmd_generate(args: argparse.Namespace) -> None:
    from .generate import apply_pack, build_pipeline, generate
    from .models import load_model
    from .pack import load_pack
    from .fileio import atomic_path

    pack = load_pack(args.pack)
    prompt = pack.rewrite_prompt(args.prompt)
    components = load_model(args.model, args.tokenizer, args.prediction_type)
    pipe = build_pipeline(components).to(_device(args.device))
    for warning in apply_pack(pipe, pack, scale=args.scale):
        print(f"warning: {warning}", file=sys.stderr)
    height, width = ((args.size, args.size) if args.size else pack.meta.get("training_size", (None, None)))
    images = generate(pipe, prompt, num_images=args.num, steps=args.steps, guidance_scale=args.guidance,
                      seed=args.seed, height=height, width=width, negative_prompt=args.negative_prompt)
    os.makedirs(args.out, exist_ok=True)
    for i, image in enumerate(images):
        path = os.path.join(args.out, f"{args.seed:05d}_{i:02d}.png")
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        print(path)


def cmd_export(args: argparse.Namespace) -> None:
    from .pack import load_pack, write_exports

    if not args.lora and not args.embeddings:
        raise BASError("export: give --lora FILE and/or --embeddings DIR")
    pack = load_pack(args.pack)
    name = os.path.splitext(os.path.basename(args.pack))[0]
    for path in write_exports(pack, name, args.lora, args.embeddings):
        print(path)


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import run_benchmark

    run_benchmark(args.preset, args.resolution, args.steps, _device(args.device), _csv(args.configs),
                  timing=not args.no_timing)


def _check_toy_model(model: str | None) -> None:
    from bas_toyworld.extraction import DEFAULT_MODEL

    if model is None and not (DEFAULT_MODEL / "model_index.json").is_file():
        raise BASError(f"the committed toy model is missing at {DEFAULT_MODEL}; reinstall the package or pass --model "
                       "(make one with scripts/pretrain_toy.py)")


def cmd_demo(args: argparse.Namespace) -> None:
    # The toy world lives beside the engine (bas_toyworld); imported only for these two commands.
    from bas_toyworld.demo import DemoSettings, run_demo

    _check_toy_model(args.model)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for name in ("phase1_steps", "phase2_steps"):
        if getattr(args, name) < 0:
            raise BASError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.images < 1:
        raise BASError(f"--images must be at least 1, got {args.images}")
    settings = DemoSettings(scene_seed=args.scene, phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps,
                            mode=args.mode, image_seeds=tuple(range(args.images)))
    if args.guidance is not None:
        settings.guidance = args.guidance
    run_demo(args.out, args.model, settings)


def cmd_fidelity(args: argparse.Namespace) -> None:
    from bas_toyworld.fidelity import VARIANTS, FidelitySettings, run_fidelity

    _check_toy_model(args.model)
    variants = tuple(_csv(args.variants) or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BASError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    for name in ("scenes", "seeds", "images", "workers"):
        if getattr(args, name) < 1:
            raise BASError(f"--{name} must be at least 1, got {getattr(args, name)}")
    settings = FidelitySettings(variants=variants, scene_seeds=tuple(range(1, args.scenes + 1)),
                                train_seeds=tuple(range(args.seeds)), phase1_steps=args.phase1_steps,
                                phase2_steps=args.phase2_steps, image_seeds=tuple(range(args.images)),
                                workers=args.workers, model_dir=args.model)
    run_fidelity(args.out, settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bas", description="Break-A-Scene: extract concepts from one image")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_extract, _add_generate, _add_export, _add_bench, _add_demo, _add_fidelity):
        add(sub)
    args = parser.parse_args(argv)
    command = {"extract": cmd_extract, "generate": cmd_generate, "export": cmd_export, "bench": cmd_bench,
               "demo": cmd_demo, "fidelity": cmd_fidelity}
    try:
        command[args.command](args)
    except BASError as exc:
        print(f"bas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bas {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
