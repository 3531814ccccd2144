"""`bas` command line: extract concepts from a scene, generate with them, export, benchmark."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .errors import BASError
from .scene import split_list

#: entry-point group through which other packages (the toy world) add `bas` subcommands: each entry point is a
#: function taking the subparsers object; the parser it adds sets `run` (set_defaults) to its command function
PLUGIN_GROUP = "bas.commands"
#: progress lines at most this often (seconds) when stderr is not a terminal (a log file, a CI job)
LOG_PROGRESS_INTERVAL = 30.0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="diffusers model folder or SD1.x/SD2.x/SDXL checkpoint file")
    p.add_argument("--tokenizer", help="tokenizer folder (needed for single-file checkpoints)")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                   help="override the model's prediction type (SD2 768-v checkpoints need v_prediction)")


#: the TrainConfig fields `bas extract` / `bas batch` take as options; defaults, bounds, choices and help are
#: TrainConfig's (a True-by-default switch becomes --no-<name>)
CLI_SETTINGS = ("phase1_steps", "phase2_steps", "phase1_lr", "phase2_lr", "resolution", "mode", "lora_rank",
                "lora_alpha", "train_text_encoder", "attention_loss_weight", "masked_loss", "union_sampling",
                "flip", "prior_preservation", "class_prompt", "num_class_images", "batch_size",
                "gradient_checkpointing", "mixed_precision", "seed")
_TYPES = {"int": int, "float": float, "float | None": float, "str": str}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """The training options of `bas extract`, shared by `bas batch` (read back by `_train_config`)."""
    from .config import TrainConfig, setting_info

    p.add_argument("--names", help="comma-separated concept names, one per mask")
    p.add_argument("--init", help="comma-separated initializer words, one per mask (empty entries allowed)")
    p.add_argument("--tokens", help=setting_info("tokens")["help"] + ", comma-separated")
    for name in CLI_SETTINGS:
        info, kind = setting_info(name), TrainConfig.__dataclass_fields__[name].type
        flag = "--" + name.replace("_", "-")
        if kind == "bool" and info["default"]:
            p.add_argument("--no-" + flag[2:], dest=name, action="store_false", help="turn off: " + info["help"])
        elif kind == "bool":
            p.add_argument(flag, action="store_true", help=info["help"])
        else:
            bounds = f" [{info['min']:g}, {info['max']:g}]" if info["min"] is not None else ""
            default = "" if info["default"] is None else f" (default {info['default']})"
            p.add_argument(flag, type=_TYPES[kind], default=info["default"], choices=info["choices"],
                           help=info["help"] + bounds + default)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cache-dir", help="where class images are cached (default ~/.cache/break_a_scene)")


def _train_config(args: argparse.Namespace):
    """The TrainConfig of the options added by `_add_train_options`."""
    from .config import TrainConfig

    return TrainConfig(tokens=split_list(args.tokens), **{name: getattr(args, name) for name in CLI_SETTINGS})


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="train handles for the concepts of one scene and write a concept pack")
    p.add_argument("scene_dir", help="folder with img.* and mask0.png, mask1.png, …")
    _add_model_options(p)
    p.add_argument("--out", required=True, help="concept pack to write (.safetensors)")
    _add_train_options(p)
    p.set_defaults(run=cmd_extract)


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="extract many scenes on a pool of Ray workers (local or a cluster)",
                       description="Every sub-folder of SCENES is a scene as `bas extract` takes it (optionally "
                                   "with a scene.json holding names / initializers / settings), or SCENES is a "
                                   "JSON-lines manifest. Writes OUT/<scene>.safetensors and OUT/batch.jsonl; "
                                   "a rerun skips scenes already done with the same model, scene and settings. "
                                   "The training options apply to every scene (--names/--init to those without "
                                   "their own). See docs/BATCH.md.")
    p.add_argument("scenes", help="folder of scene folders, or a .jsonl manifest (one scene per line)")
    _add_model_options(p)
    p.add_argument("--out", required=True, help="folder for the packs and batch.jsonl")
    _add_train_options(p)
    p.add_argument("--address", help="join this Ray cluster (auto, HOST:6379, ray://HOST:10001); "
                                     "default: start a local Ray for this command")
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs per worker (fractions share a GPU; default 1 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-task", type=float, default=1.0,
                   help="CPUs per worker; also the torch threads of a CPU worker (default 1)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="times a scene is retried when its worker dies (default 2)")
    p.add_argument("--workers", type=int, default=None, help="at most this many workers (default: as many as fit)")
    p.set_defaults(run=cmd_batch)


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
    p.set_defaults(run=cmd_generate)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a kohya LoRA and one embedding file per handle")
    p.add_argument("pack")
    p.add_argument("--lora", help="LoRA file to write (kohya keys, loads in ComfyUI LoraLoader / diffusers)")
    p.add_argument("--embeddings", help="folder for one <pack>_<concept>.safetensors per handle")
    p.set_defaults(run=cmd_export)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="s/step and peak memory: this engine vs an official-equivalent setup")
    p.add_argument("--preset", choices=["tiny", "tiny-sdxl", "sd15", "sdxl"], default="tiny",
                   help="random weights in the shapes of a tiny test model (tiny-sdxl: with SDXL's two encoders), "
                        "SD1.5 or SDXL (tiny-sdxl with --matrix only)")
    p.add_argument("--resolution", type=int, default=None, help="default 64 (tiny), 512 (sd15) or 1024 (sdxl)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase and configuration")
    p.add_argument("--device", default=None)
    p.add_argument("--configs", help="comma-separated subset: engine, engine-bf16, official-equivalent "
                                     "(e.g. when the official-equivalent does not fit in memory)")
    p.add_argument("--no-timing", action="store_true",
                   help="only peak memory (one process per configuration): for machines where the "
                        "configurations do not fit in memory together")
    p.add_argument("--flops", action="store_true",
                   help="also count the floating-point operations of one step per phase (for estimating the "
                        "s/step of a GPU from its throughput, where none is at hand to time)")
    p.add_argument("--simulate", action="store_true",
                   help="no computation: peak memory and operations of a step from a run on fake tensors, for "
                        "configurations this machine cannot run (e.g. SDXL at 1024 px without a GPU)")
    p.add_argument("--matrix", action="store_true",
                   help="this engine alone in LoRA and full mode, gradient checkpointing on and off: s/step and peak "
                        "memory per phase (one model, one process)")
    p.set_defaults(run=cmd_bench)


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BASError("--device cuda was asked for, but this torch sees no CUDA device")
    return name


def progress_bar(total: int, unit: str, stream=None):
    """A tqdm bar on stderr; when that is not a terminal (a log), it writes at most every
    LOG_PROGRESS_INTERVAL seconds, so an 8,000-step run leaves a few hundred lines, not megabytes."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, unit=unit, file=stream, mininterval=0.1 if interactive else LOG_PROGRESS_INTERVAL,
                ascii=not interactive)


def training_progress(bar):
    """The on_progress callback that shows a run's phase and losses on `bar` (refreshed at the bar's own rate:
    set_description/set_postfix would otherwise write a line per step)."""
    def progress(event) -> None:
        bar.set_description(f"phase {event.phase}", refresh=False)
        bar.set_postfix({k: f"{v:.4f}" for k, v in event.losses.items()}, refresh=False)
        bar.update(1)
    return progress


def cmd_extract(args: argparse.Namespace) -> None:
    from .callbacks import TrainCallbacks
    from .models import load_model
    from .pack import save_pack
    from .scene import load_scene_dir
    from .trainer import train

    scene = load_scene_dir(args.scene_dir, split_list(args.names), split_list(args.init))
    config = _train_config(args)
    config.validate(scene.num_concepts)
    device = _device(args.device)
    components = load_model(args.model, args.tokenizer, args.prediction_type)
    total = config.phase1_steps + config.phase2_steps
    with progress_bar(total, "step") as bar:
        pack = train(components, scene, config, TrainCallbacks(on_progress=training_progress(bar)), device=device,
                     cache_dir=args.cache_dir)
    save_pack(pack, args.out)
    handles = ", ".join(f"{t} = {n}" for t, n in zip(pack.tokens, pack.names))
    print(f"wrote {args.out}: {handles}")


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import BatchInterrupted, run_batch
    from .batch_report import LOG_NAME
    from .batch_scenes import discover_scenes

    config = _train_config(args)
    config.validate(len(config.tokens) if config.tokens else 1)      # bad options fail before Ray starts
    jobs = discover_scenes(args.scenes, split_list(args.names), split_list(args.init), exclude=[args.out])
    log = os.path.join(args.out, LOG_NAME)
    try:
        result = run_batch(jobs, args.model, args.out, config, tokenizer=args.tokenizer,
                           prediction_type=args.prediction_type, device=args.device, address=args.address,
                           gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                           max_retries=args.max_retries, workers=args.workers, cache_dir=args.cache_dir)
    except BatchInterrupted as exc:
        print(f"bas batch: interrupted: {exc.result.summary()}. Finished packs are in {args.out}, no partial "
              f"file was left; records in {log}. Run the same command again to resume.", file=sys.stderr)
        return 130
    print(f"bas batch: {result.summary()}; records in {log}")
    if not result.ok:
        failed = [r["scene"] for r in result.records if r["status"] != "done" and r["status"] != "skipped"]
        print(f"bas batch: {len(failed)} scene(s) failed: {', '.join(failed[:10])}{' …' if len(failed) > 10 else ''}"
              f" (errors in {log})", file=sys.stderr)
        return 1
    return 0


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
    if args.matrix:
        from .bench_matrix import print_matrix, run_matrix

        import torch

        print_matrix(run_matrix(args.preset, torch.device(_device(args.device)), args.steps, args.resolution))
        return
    if args.preset == "tiny-sdxl":
        raise BASError("--preset tiny-sdxl: only with --matrix")
    from .bench import run_benchmark

    run_benchmark(args.preset, args.resolution, args.steps, _device(args.device), split_list(args.configs),
                  timing=not args.no_timing, flops=args.flops, simulated=args.simulate)


def build_parser() -> argparse.ArgumentParser:
    """The `bas` parser: the engine's subcommands, then those of installed plug-ins (``PLUGIN_GROUP``)."""
    from importlib.metadata import entry_points

    parser = argparse.ArgumentParser(prog="bas", description="Break-A-Scene: extract concepts from one image")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_extract, _add_batch, _add_generate, _add_export, _add_bench):
        add(sub)
    for entry_point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        entry_point.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except BASError as exc:
        print(f"bas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bas {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
