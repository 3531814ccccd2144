"""The toy world's `bas` subcommands (`bas demo`, `bas fidelity`, `bas toy-eval`), registered through the `bas.commands`
entry-point group (pyproject.toml), so the engine's CLI never imports the toy world."""
from __future__ import annotations

import argparse

from bas_engine.errors import BASError
from bas_engine.scene import split_list


def register_demo(sub: argparse._SubParsersAction) -> None:
    """Add `bas demo`."""
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
    p.set_defaults(run=cmd_demo)


def register_fidelity(sub: argparse._SubParsersAction) -> None:
    """Add `bas fidelity`."""
    p = sub.add_parser("fidelity", help="the method and its ablations on held-out toy scenes: mean ± 95%% CI table")
    p.add_argument("--out", default="out/fidelity", help="folder for table.md, results.json and per-run records")
    p.add_argument("--model", help="toy model folder (default: the committed one)")
    p.add_argument("--variants", help="comma-separated subset of: method, no_phase1, no_masked_loss, "
                                      "no_attention_loss, no_union_sampling, full_finetune (default: all of them; "
                                      "with --concepts or several --masks: method)")
    p.add_argument("--scenes", type=int, default=3, help="held-out scenes (seeds 1..N; the demo uses 0)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per scene")
    p.add_argument("--phase1-steps", type=int, default=400)
    p.add_argument("--phase2-steps", type=int, default=400)
    p.add_argument("--images", type=int, default=2, help="images per prompt")
    p.add_argument("--workers", type=int, default=2, help="parallel runs (processes, one thread each)")
    p.add_argument("--masks", default="loose",
                   help="comma-separated mask qualities given to the method, one table row each: exact, loose, "
                        "dilated, eroded, shifted (docs/FIDELITY.md defines each; default loose)")
    p.add_argument("--concepts", help="comma-separated numbers of concepts per scene (1-8), e.g. 1,2,3,4,6,8: the "
                                      "concept-count sweep on scenes of small objects, one table row each, and a "
                                      "plot (default: the standard scenes of three large concepts)")
    p.set_defaults(run=cmd_fidelity)


def register_toy_eval(sub: argparse._SubParsersAction) -> None:
    """Add `bas toy-eval`."""
    p = sub.add_parser("toy-eval", help="the base toy model on held-out one-object captions: shape/colour/texture/"
                                        "background accuracy beside the judge's accuracy on the world's renders")
    p.add_argument("--model", help="toy model folder (default: the committed one)")
    p.add_argument("--captions", type=int, default=200, help="held-out captions (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out caption stream and the image noise")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps per image")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    p.add_argument("--sheet", help="also write a PNG: 32 world renders above the model's images of the same captions")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.set_defaults(run=cmd_toy_eval)


def cmd_toy_eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .extraction import DEFAULT_MODEL
    from .toy_eval import run_toy_eval

    _check_toy_model(args.model)
    if args.model is not None and not (Path(args.model) / "model_index.json").is_file():
        raise BASError(f"--model: {args.model} is not a toy model folder (no model_index.json)")
    for name in ("captions", "steps"):
        if getattr(args, name) < 1:
            raise BASError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.guidance < 1:
        raise BASError(f"--guidance must be at least 1, got {args.guidance}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_toy_eval(args.model or DEFAULT_MODEL, args.captions, args.seed, args.steps, args.guidance, args.sheet)


def _check_toy_model(model: str | None) -> None:
    from .extraction import DEFAULT_MODEL
    from .worlds import model_world

    if model is None and not (DEFAULT_MODEL / "model_index.json").is_file():
        raise BASError(f"the committed toy model is missing at {DEFAULT_MODEL}; reinstall the package or pass --model "
                       "(make one with scripts/pretrain_toy.py)")
    try:
        model_world(model or DEFAULT_MODEL)
    except ValueError as exc:  # a toy_world.json that names no world, or one there is not
        raise BASError(f"--model: {exc}") from exc


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import DemoSettings, run_demo

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
    from .fidelity import VARIANTS, FidelitySettings, run_fidelity
    from .mask_quality import MASK_QUALITIES

    _check_toy_model(args.model)
    masks = tuple(split_list(args.masks) or ("loose",))
    unknown = [m for m in masks if m not in MASK_QUALITIES]
    if unknown:
        raise BASError(f"--masks: unknown {unknown}; choose from {list(MASK_QUALITIES)}")
    concepts = _concept_counts(args.concepts, args.model)
    # A sweep multiplies the runs by its length: by default it measures the method, not every ablation.
    sweep = bool(concepts) or len(masks) > 1
    variants = tuple(split_list(args.variants) or (("method",) if sweep else VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise BASError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    for name in ("scenes", "seeds", "images", "workers"):
        if getattr(args, name) < 1:
            raise BASError(f"--{name} must be at least 1, got {getattr(args, name)}")
    settings = FidelitySettings(variants=variants, scene_seeds=tuple(range(1, args.scenes + 1)),
                                train_seeds=tuple(range(args.seeds)), phase1_steps=args.phase1_steps,
                                phase2_steps=args.phase2_steps, image_seeds=tuple(range(args.images)),
                                workers=args.workers, model_dir=args.model, masks=masks, concepts=concepts)
    run_fidelity(args.out, settings)


def _concept_counts(text: str | None, model_dir: str | None) -> tuple[int, ...]:
    """--concepts as numbers (at most what the model's world puts in a scene), or a BASError naming the flag and
    the bad item."""
    from .extraction import DEFAULT_MODEL
    from .worlds import get_world, model_world

    world = get_world(model_world(model_dir or DEFAULT_MODEL))
    counts = []
    for item in split_list(text) or []:
        if not item.isdigit() or not 1 <= int(item) <= world.max_concepts:
            raise BASError(f"--concepts: {item!r} is not a number of concepts from 1 to {world.max_concepts} (the "
                           f"most the model's world {world.name} puts in one scene)")
        counts.append(int(item))
    if len(set(counts)) != len(counts):
        raise BASError(f"--concepts: {text!r} lists a count twice")
    return tuple(counts)
