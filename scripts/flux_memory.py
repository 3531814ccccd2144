"""What Break-A-Scene on Flux.1 dev needs at 1024 px with LoRA (rank 16), on paper: frozen weights in bf16 or in
ComfyUI's fp8 weight dtype, gradient checkpointing off / on, and whether it fits a 24 GB GPU. The estimate is
``bas_engine.flux_memory``'s (parameter counts from the architecture, activations from ``memory``); no GPU has
measured it yet (scripts/gpu_check.sh is where that would happen).

    python scripts/flux_memory.py [--resolution 1024] [--rank 16] [--gpu-gib 24]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bas_engine.flux_memory import FLUX_DEV, training_memory  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--gpu-gib", type=float, default=24.0)
    args = parser.parse_args(argv)
    print(f"Flux.1 dev: transformer {FLUX_DEV.transformer_parameters() / 1e9:.2f}B parameters, LoRA rank {args.rank} "
          f"{FLUX_DEV.lora_parameters(args.rank) / 1e6:.1f}M; {args.resolution} px, batch 1, 256 T5 tokens")
    rows = [("bf16", 2, 2), ("fp8 (ComfyUI weight_dtype)", 1, 1)]
    names = ["transformer", "text encoders", "LoRA + Adam", "patched weights", "activations", "total"]
    print(f"{'frozen weights':28s} {'checkpointing':14s} " + " ".join(f"{n:>15s}" for n in names)
          + f"  fits {args.gpu_gib:.0f} GB")
    for label, weights, text in rows:
        for checkpointing in (False, True):
            parts = training_memory(FLUX_DEV, args.resolution, args.rank, checkpointing, weights, text)
            fits = "yes" if parts["total"] * 1.15 <= args.gpu_gib * 1e9 / 2 ** 30 else "no"
            print(f"{label:28s} {'on' if checkpointing else 'off':14s} "
                  + " ".join(f"{parts[n]:13.1f} G" for n in names) + f"  {fits}")
    print("(GiB; 'fits' keeps 15 % headroom. In place, ComfyUI loads the transformer and both text encoders fully "
          "for the run: weight offloading during training is not used. 'patched weights': the W + up @ down copies "
          "in the compute dtype that autograd keeps for the backward pass, all adapted layers' without "
          "checkpointing, the largest block's with it.)")


if __name__ == "__main__":
    main()
