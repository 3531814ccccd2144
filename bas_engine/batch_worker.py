"""The worker side of `bas batch`: the Ray actor that loads the model once and trains scene after scene.

Imported by `batch` (the driver); Ray itself is imported only where a batch starts (`import_ray`).
"""
from __future__ import annotations

import os
import socket
import time
import traceback

from .config import TrainConfig
from .errors import BASError


class BatchWorker:
    """Ray actor body: loads the model once, then trains one scene per `train` call.

    Errors of a scene come back as a failed result, never as an exception, so a bad scene cannot take the
    worker down; a model that does not load is reported by `ready`.
    """

    def __init__(self, model: str, tokenizer: str | None, prediction_type: str | None, device: str | None,
                 threads: int, cache_dir: str | None):
        import torch

        from .models import load_model

        torch.set_num_threads(max(1, threads))
        quiet_libraries()
        self.cache_dir = cache_dir
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self.error = None
        self.fingerprint = None
        try:
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            elif device.startswith("cuda") and not torch.cuda.is_available():
                raise BASError(f"--device {device}: this worker ({self.where}) sees no CUDA device "
                               "(give --gpus-per-task, or a CPU device)")
            self.device = device
            self.components = load_model(model, tokenizer, prediction_type)
            self.fingerprint = self.components.fingerprint()
        except BASError as exc:
            self.error = str(exc)
        except Exception as exc:   # noqa: BLE001 - reported to the driver, which stops the batch with it
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict:
        """Where this worker runs and the fingerprint of its model (or why the model did not load)."""
        return {"worker": self.where, "pid": os.getpid(), "fingerprint": self.fingerprint,
                "device": getattr(self, "device", None), "error": self.error}

    def train(self, scene, config: TrainConfig) -> dict:
        """Train one scene; {"status": "done", "pack", "seconds"} or {"status": "failed", "error"}."""
        from .trainer import train

        start = time.perf_counter()
        result = {"worker": self.where}
        try:
            result.update(status="done", pack=train(self.components, scene, config, device=self.device,
                                                    cache_dir=self.cache_dir))
        except BASError as exc:
            result.update(status="failed", error=str(exc))
        except Exception as exc:   # noqa: BLE001 - e.g. out of memory: this scene fails, the batch goes on
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=8))
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result


def quiet_libraries() -> None:
    """No per-load progress bars or notices from every worker in the driver's output."""
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def import_ray():
    """Ray, or a BASError saying how to install it (it is an optional extra)."""
    try:
        import ray
    except ImportError as exc:
        raise BASError("bas batch needs Ray: pip install 'comfyui-break-a-scene[batch]' (or pip install 'ray>=2.9')"
                       ) from exc
    return ray
