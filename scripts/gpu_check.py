"""The GPU check (run by scripts/gpu_check.sh): the engine's configurations on CUDA and the ComfyUI Trainer node on
CUDA, in one table. Nothing is downloaded: every model is built locally with random weights.

1. ``bas bench --matrix`` on SD1.5's shapes at 512 px and on full-size SDXL at 1024 px: LoRA and full fine-tuning,
   gradient checkpointing on and off; s/step and torch.cuda.max_memory_allocated per phase (weights included).
2. The Trainer node in ComfyUI (in-process, its own loaders and model management) on the SD1.5-shaped test
   checkpoint at 512 px and the SDXL-family (Segmind Vega depths) one at 1024 px, trained in place and, for
   comparison, through the conversion path the node used before (``scripts/comfy_memory.py``): the loaded model's
   footprint and the peak above it. And on a random Flux transformer at Flux's widths with 4 double + 8 single
   blocks at 1024 px (in place only), beside ``bas_engine.flux_memory``'s estimate for that shape, which is what
   the full Flux dev figures of ``scripts/flux_memory.py`` rest on.

    bash scripts/gpu_check.sh                       # on the GPU machine: about 8 minutes
    bash scripts/gpu_check.sh --device cpu --tiny   # the same script on tiny models on the CPU (tested in CI)

Prints the table, then one JSON line; ``--json FILE`` (default $OUT/gpu_check.json when $OUT is set) keeps it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models at 64 px (a check of the script itself)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase and configuration")
    parser.add_argument("--json", default=os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT")
                        else None)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
               PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    environment = _environment(env)
    print("environment: " + json.dumps(environment), flush=True)

    bench_presets = (("tiny", None), ("tiny-sdxl", None)) if args.tiny else (("sd15", 512), ("sdxl", 1024))
    bench = []
    for preset, resolution in bench_presets:
        command = [sys.executable, "-c", "from bas_engine.cli import main; main()", "bench", "--matrix",
                   "--preset", preset, "--device", args.device, "--steps", str(args.steps)]
        if resolution:
            command += ["--resolution", str(resolution)]
        bench += _json_rows(_run(command, env), "matrix", {"preset": preset, "error": "bench failed"})

    comfy = []
    comfy_runs = ((("sd15l3", 64), ("sdxl_vega", 64), ("flux", 64)) if args.tiny else
                  (("sd15l3", 512), ("sdxl_vega", 1024), ("flux_d4s8", 1024)))
    comfyui = env.get("COMFYUI_PATH")
    for model, resolution in comfy_runs:
        if not comfyui:
            comfy.append({"model": model, "error": "no ComfyUI (set COMFYUI_PATH)"})
            continue
        command = [sys.executable, os.path.join(REPO, "scripts", "comfy_memory.py"), "--models", model,
                   "--resolution", str(resolution), "--steps", "1" if args.tiny else str(args.steps)]
        comfy += _json_rows(_run(command, env), "rows", {"model": model, "error": "comfy_memory failed"},
                            extra={"resolution": resolution})

    print_table(bench, comfy)
    result = {"environment": environment, "bench": bench, "comfy": comfy,
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    failed = [r for r in bench + comfy if "error" in r]
    return 1 if failed else 0


def _environment(env: dict) -> dict:
    probe = ("import json, torch; d = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
             "'cuda': d, 'gpu': torch.cuda.get_device_name(0) if d else None, "
             "'gpu_memory_GiB': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if d else None}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-300:]}


def _run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    print("$ " + " ".join(command[:1] + [c if " " not in c else repr(c) for c in command[1:]]), flush=True)
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    sys.stdout.write("".join(line + "\n" for line in out.stdout.splitlines() if not line.startswith("{")))
    if out.returncode != 0:
        sys.stdout.write(out.stderr[-2000:])
    return out


def _json_rows(out: subprocess.CompletedProcess, key: str, failure: dict, extra: dict | None = None) -> list[dict]:
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            rows = json.loads(line).get(key)
            if rows is not None:
                return [{**row, **(extra or {})} for row in rows]
    reason = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
    return [{**failure, "error": f"{failure['error']}: {reason[:300]}"}]


def print_table(bench: list[dict], comfy: list[dict]) -> None:
    sys.path.insert(0, REPO)
    from bas_engine.tables import print_rows

    gib = 2 ** 30
    print()
    title = f"{'what':<34}{'px':>6}"
    bench_label = (title, 40, lambda r: f"bench {r.get('preset')} {r.get('mode', '')} ckpt "
                                        f"{r.get('gradient_checkpointing', '')}".ljust(34) + f"{r.get('resolution', ''):>6}")
    print_rows(bench_label, [("phase 1 s/step", 16, lambda r: f"{r['phase1_s_per_step']:.3f}"),
                             ("phase 2 s/step", 16, lambda r: f"{r['phase2_s_per_step']:.3f}"),
                             ("phase 1 GiB", 13, lambda r: f"{r['phase1_peak_bytes'] / gib:.2f}"),
                             ("phase 2 GiB", 13, lambda r: f"{r['phase2_peak_bytes'] / gib:.2f}")], bench)
    node_label = (title, 40, lambda r: f"node {r.get('model')} {r.get('path', '')}".ljust(34)
                  + f"{r.get('resolution', ''):>6}")
    print_rows(node_label, [("node seconds", 16, lambda r: f"{r['seconds']:.1f}"),
                            ("footprint GiB", 16, lambda r: f"{r['footprint_bytes'] / gib:.2f}"),
                            ("peak above GiB", 16, lambda r: f"{r['peak_above_bytes'] / gib:.2f}"),
                            ("x footprint", 13, lambda r: f"{r['peak_above_bytes'] / r['footprint_bytes']:.2f}"),
                            ("estimate GiB", 16, _estimate)], comfy)


def _estimate(row: dict) -> str:
    """bas_engine.flux_memory's estimate above the loaded model (checkpointing off / on), for the Flux rows."""
    estimate = row.get("estimate_above_bytes")
    return f"{estimate['off'] / 2 ** 30:.2f}/{estimate['on'] / 2 ** 30:.2f}" if estimate else "-"


if __name__ == "__main__":
    sys.exit(main())
