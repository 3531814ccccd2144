"""Batch extraction over many scenes on Ray: `bas batch` and `run_batch` (the same from a notebook).

The driver (this process) reads the scenes, decides what to skip and writes every result; a pool of Ray
actors trains. Each actor loads the model once and then trains scene after scene, so a batch pays one
model load per worker, not one per scene. Scenes travel to the workers as tensors and packs come back as
tensors, so only the model path has to exist on the worker machines: scenes and results stay with the
driver. Ray is an optional dependency (`pip install .[batch]`), imported only inside functions
(`batch_worker.import_ray`); nothing outside the batch modules imports it.

This module is the driver. The scenes are read by `batch_scenes` (folders and manifests, before anything
runs), the worker is `batch_worker.BatchWorker`, the records and the progress line are `batch_report`.

Results: `OUT/<scene>.safetensors` (atomic, `pack.save_pack`, the same bytes `bas extract` writes for the
same scene, model and settings) and `OUT/batch.jsonl`, one record per scene.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .batch_report import BatchResult, Progress, RecordLog
from .batch_scenes import SceneJob, discover_scenes
from .batch_worker import BatchWorker, import_ray
from .config import TrainConfig
from .errors import BASError, InputError, PackError

PACK_SUFFIX = ".safetensors"
#: local Ray's shared-memory object store: packs and scenes pass through it, larger objects spill to disk
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch: remaining tasks were cancelled; `result` holds what finished before."""

    def __init__(self, result: "BatchResult"):
        super().__init__("batch interrupted")
        self.result = result


# -- the driver ---------------------------------------------------------------------------------------
@dataclass
class _Slot:
    """One actor of the pool and what it is doing."""

    actor: Any
    index: int
    ready: bool = False
    info: dict = field(default_factory=dict)
    job: int | None = None               # index of the scene it trains
    started: float = 0.0


def _worker_count(ray, gpus_per_task: float, cpus_per_task: float, requested: int | None, scenes: int) -> int:
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    fits = math.floor(cpus / cpus_per_task + 1e-9) if cpus_per_task > 0 else scenes
    if gpus_per_task > 0:
        fits = min(fits, math.floor(gpus / gpus_per_task + 1e-9))
    if fits < 1:
        raise BASError(f"the Ray cluster has {gpus:g} GPU(s) and {cpus:g} CPU(s): no worker fits "
                       f"--gpus-per-task {gpus_per_task:g} --cpus-per-task {cpus_per_task:g}")
    return max(1, min(fits, requested or fits, scenes))


def _ray_error(exc: BaseException) -> str:
    """A short reason from a Ray error (the first line of its message)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def run_batch(scenes: str | os.PathLike | Sequence[SceneJob], model: str, out_dir: str | os.PathLike,
              config: TrainConfig | None = None, *, tokenizer: str | None = None,
              prediction_type: str | None = None, device: str | None = None, address: str | None = None,
              gpus_per_task: float | None = None, cpus_per_task: float = 1.0, max_retries: int = 2,
              workers: int | None = None, cache_dir: str | None = None, progress: bool = True,
              on_event: Callable[[str, dict], None] | None = None) -> BatchResult:
    """Extract every scene of `scenes` with `model` on a pool of Ray workers; write packs and records to `out_dir`.

    `scenes` is a folder of scene folders, a JSON-lines manifest (see `discover_scenes`) or a list of
    SceneJob. `config` holds the settings of every scene (a scene's `settings` override fields of it).
    Ray: an already initialised Ray is used as it is; else `address` joins a cluster ("auto",
    "ray://head:10001", "host:6379"), and without it a local Ray is started for this call and stopped after.
    Workers: one per `gpus_per_task` GPUs (default 1 when the cluster has GPUs, else 0 = CPU workers) and
    `cpus_per_task` CPUs (also the torch threads of a CPU worker), as many as fit, at most `workers`.
    A scene whose pack exists with the same model, scene and settings is skipped. A scene that fails is
    recorded and the batch goes on; a scene whose worker dies is retried up to `max_retries` times on a
    fresh worker, then recorded as failed. `on_event(kind, info)` sees "worker_ready", "submitted" and
    "record" events. Ctrl-C stops the workers, writes the records and raises BatchInterrupted (a
    KeyboardInterrupt) carrying the result; no pack is ever half-written.
    """
    config = config or TrainConfig()
    out_dir = os.fspath(out_dir)
    if max_retries < 0:
        raise InputError(f"max_retries must be 0 or more, got {max_retries}")
    if cpus_per_task <= 0 and not gpus_per_task:
        raise InputError(f"cpus_per_task must be above 0 for CPU workers, got {cpus_per_task:g}")
    if gpus_per_task is not None and gpus_per_task < 0:
        raise InputError(f"gpus_per_task must be 0 or more, got {gpus_per_task:g}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if isinstance(scenes, (str, os.PathLike)):
        jobs = discover_scenes(scenes, exclude=[out_dir])
    else:
        jobs = list(scenes)
        if not jobs:
            raise InputError("scenes: no scenes given")
    os.makedirs(out_dir, exist_ok=True)

    ray = import_ray()
    started_here = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        started_here = True
    try:
        return _Driver(ray, jobs, model, out_dir, config, tokenizer, prediction_type, device, gpus_per_task,
                       cpus_per_task, max_retries, workers, cache_dir, progress, on_event).run()
    finally:
        if started_here:
            ray.shutdown()


class _CtrlC:
    """Ctrl-C (SIGINT) as a flag that the driver loop reads between steps, then raises as KeyboardInterrupt.

    Python raises KeyboardInterrupt wherever the main thread happens to run Python code, and the driver's
    main thread also runs code whose exceptions are printed as "Exception ignored" and dropped: finalizers
    (`__del__`) and Cython callbacks from Ray's C++ core that return nothing (ray-project/ray#7734). A Ctrl-C
    that lands there is lost and the batch goes on as if nothing was pressed. A handler that only sets a flag
    cannot be lost; the loop wakes at least once a second (`ray.wait` timeout) to read it.
    Installed only over Python's default handler and on the main thread (a handler someone else set, or an
    ignored SIGINT, is left alone); a second Ctrl-C while the batch is stopping interrupts at once.
    """

    def __init__(self):
        self.pressed = False
        self.previous = None

    def __enter__(self) -> "_CtrlC":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _on_sigint(self, signum, frame) -> None:
        if self.pressed:            # pressed again: do not wait for the loop any more
            self.previous(signum, frame)
        self.pressed = True

    def check(self) -> None:
        """Raise KeyboardInterrupt here if Ctrl-C has been pressed."""
        if self.pressed:
            raise KeyboardInterrupt


class _Driver:
    """The scheduling loop of one batch (see run_batch)."""

    def __init__(self, ray, jobs, model, out_dir, config, tokenizer, prediction_type, device, gpus_per_task,
                 cpus_per_task, max_retries, workers, cache_dir, progress, on_event):
        self.ray, self.jobs, self.out_dir, self.config = ray, jobs, out_dir, config
        self.max_retries, self.on_event = max_retries, on_event or (lambda kind, info: None)
        if gpus_per_task is None:
            gpus_per_task = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        if gpus_per_task == 0 and device and device.startswith("cuda"):
            raise InputError(f"--device {device} needs --gpus-per-task above 0: Ray hides the GPUs from "
                             "workers that did not ask for one")
        self.size = _worker_count(ray, gpus_per_task, cpus_per_task, workers, len(jobs))
        threads = max(1, int(cpus_per_task))
        self.actor_class = ray.remote(BatchWorker).options(num_gpus=gpus_per_task, num_cpus=cpus_per_task,
                                                            max_restarts=0, max_task_retries=0)
        self.actor_args = (model, tokenizer, prediction_type, device, threads, cache_dir)
        # a worker that dies gets a fresh replacement; deaths in training are bounded by the per-scene
        # retries, but workers that die before they are ready (out of memory while loading, say) would
        # loop forever: this many of those in a row end the batch
        self.load_deaths_allowed = 3 * self.size
        self.load_deaths = 0
        self.records: list[dict | None] = [None] * len(jobs)
        self.attempts = [0] * len(jobs)
        self.pending = deque(range(len(jobs)))
        self.log = RecordLog(out_dir)
        self.progress = Progress(len(jobs), progress)
        self.fingerprint: str | None = None
        self.slots: dict[Any, _Slot] = {}          # ObjectRef of the slot's current call -> slot
        self.count = 0
        self.start = time.monotonic()

    # -- pool ---------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        actor = self.actor_class.remote(*self.actor_args)
        slot = _Slot(actor, self.count)
        self.count += 1
        self.slots[actor.ready.remote()] = slot

    def _retire(self, slot: _Slot) -> None:
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:   # noqa: BLE001 - already gone
            pass

    # -- records ------------------------------------------------------------------------------------
    def _record(self, index: int, status: str, **fields) -> None:
        job = self.jobs[index]
        record = {"scene": job.name, "source": job.source, "status": status, "seconds": None, "losses": None,
                  "error": None, "attempts": self.attempts[index], "worker": None,
                  "pack": os.path.join(self.out_dir, job.name + PACK_SUFFIX) if status in ("done", "skipped")
                  else None}
        record.update(fields)
        self.records[index] = record
        self.log.append(record)
        self.progress.update(status, trained=status == "done" or record.get("worker") is not None)
        self.on_event("record", record)

    def _prepare(self, index: int):
        """(scene, config) to train, or None when the scene was recorded as skipped or failed here."""
        job = self.jobs[index]
        try:
            scene = job.load()
            config = job.config(self.config)
            config.validate(scene.num_concepts)
        except (BASError, TypeError, ValueError) as exc:
            self._record(index, "failed", error=str(exc))
            return None
        path = os.path.join(self.out_dir, job.name + PACK_SUFFIX)
        retrain_because = None
        if os.path.exists(path):
            from .pack import pack_mismatch, read_pack_meta

            try:
                meta = read_pack_meta(path)
            except PackError as exc:
                retrain_because = [str(exc)]
            else:
                retrain_because = pack_mismatch(meta, self.fingerprint, scene.fingerprint(), config)
                if not retrain_because:
                    self._record(index, "skipped", losses=meta.get("losses"))
                    return None
        return scene, config, retrain_because

    def _submit(self, slot: _Slot) -> bool:
        """Give the slot the next scene that needs training; False when none is left."""
        while self.pending:
            index = self.pending.popleft()
            prepared = self._prepare(index)
            if prepared is None:
                continue
            scene, config, retrain_because = prepared
            self.attempts[index] += 1
            slot.job, slot.started = index, time.monotonic()
            slot.info["retrain_because"] = retrain_because
            self.slots[slot.actor.train.remote(scene, config)] = slot
            self.on_event("submitted", {"scene": self.jobs[index].name, "worker": slot.info.get("worker"),
                                        "pid": slot.info.get("pid"), "attempt": self.attempts[index]})
            return True
        return False

    def _on_ready(self, slot: _Slot, info: dict) -> None:
        if info.get("error"):
            raise BASError(f"worker {info['worker']} could not load the model: {info['error']}")
        if self.fingerprint is None:
            self.fingerprint = info["fingerprint"]
        elif info["fingerprint"] != self.fingerprint:
            raise BASError(f"worker {info['worker']} loaded other weights (fingerprint {info['fingerprint']}, "
                           f"the others {self.fingerprint}): the model path must hold the same model everywhere")
        slot.ready, slot.info = True, dict(info)
        self.load_deaths = 0
        self.on_event("worker_ready", dict(info))

    def _on_trained(self, slot: _Slot, result: dict) -> None:
        index, slot.job = slot.job, None
        job = self.jobs[index]
        fields = {"seconds": result.get("seconds"), "worker": result.get("worker")}
        if slot.info.get("retrain_because"):
            fields["retrained_because"] = slot.info["retrain_because"]
        if result["status"] == "done":
            from .pack import save_pack

            pack = result["pack"]
            save_pack(pack, os.path.join(self.out_dir, job.name + PACK_SUFFIX))
            self._record(index, "done", losses=pack.meta.get("losses"), **fields)
        else:
            if result.get("traceback"):
                fields["traceback"] = result["traceback"]
            self._record(index, "failed", error=result["error"], **fields)

    def _on_lost(self, slot: _Slot, exc: BaseException) -> None:
        """The slot's worker died (killed, out of memory, node lost): retry its scene, replace the worker."""
        self._retire(slot)
        reason = _ray_error(exc)
        if slot.job is not None:
            index, slot.job = slot.job, None
            if self.attempts[index] <= self.max_retries:
                self.pending.appendleft(index)
            else:
                self._record(index, "failed", worker=slot.info.get("worker"),
                             error=f"the worker died {self.attempts[index]} time(s) while training this scene "
                                   f"(--max-retries {self.max_retries}); last: {reason}")
        if not slot.ready:
            self.load_deaths += 1
            if self.load_deaths > self.load_deaths_allowed:
                raise BASError(f"{self.load_deaths} workers in a row died while loading the model "
                               f"(last: {reason}); is there enough memory for --model on the workers?")
        self._spawn()

    # -- loop ---------------------------------------------------------------------------------------
    def run(self) -> BatchResult:
        with _CtrlC() as ctrl_c:
            return self._run(ctrl_c)

    def _run(self, ctrl_c: "_CtrlC") -> BatchResult:
        ray = self.ray
        try:
            for _ in range(self.size):
                self._spawn()
            # workers still loading the model when nothing is left to give them are not waited for
            while self.slots and (self.pending or any(s.job is not None for s in self.slots.values())):
                ctrl_c.check()      # once a pass: a result that came in before Ctrl-C is still saved
                done, _ = ray.wait(list(self.slots), num_returns=1, timeout=1.0)
                for ref in done:
                    slot = self.slots.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:     # not expected: train() returns its errors
                        if slot.job is not None:
                            index, slot.job = slot.job, None
                            self._record(index, "failed", error=_ray_error(exc), worker=slot.info.get("worker"))
                        self._retire(slot)
                        self._spawn()
                        continue
                    except ray.exceptions.RayError as exc:
                        # the worker is gone: killed, out of memory (Ray's memory monitor kills the newest
                        # worker when the node runs out), its node lost, its result lost
                        self._on_lost(slot, exc)
                        continue
                    if not slot.ready:
                        self._on_ready(slot, value)
                    else:
                        self._on_trained(slot, value)
                    if not self._submit(slot):
                        self._retire(slot)     # nothing left for it: free its GPU/CPU for the others
                if not self.slots and self.pending:
                    raise BASError("no worker is left to train the remaining scenes")
        except BaseException as exc:
            self._stop(cancelled=True)
            result = self._result()
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, BatchInterrupted):
                raise BatchInterrupted(result) from None
            if isinstance(exc, ray.exceptions.RayError):
                raise BASError(f"the Ray cluster failed ({_ray_error(exc)}); finished packs are in "
                               f"{self.out_dir}, rerun to resume") from exc
            raise
        self._stop(cancelled=False)
        return self._result()

    def _stop(self, cancelled: bool) -> None:
        """Kill every worker (a training run in flight stops at once; packs are only written here)."""
        for slot in list(self.slots.values()):
            self._retire(slot)
        self.slots.clear()
        for index, record in enumerate(self.records):
            if record is None:
                job = self.jobs[index]
                self.records[index] = {"scene": job.name, "source": job.source,
                                       "status": "cancelled" if cancelled else "failed", "seconds": None,
                                       "losses": None, "error": "cancelled before it finished" if cancelled
                                       else "not run", "attempts": self.attempts[index], "worker": None,
                                       "pack": None}
        self.progress.close()
        self.log.finish(self.records)

    def _result(self) -> BatchResult:
        return BatchResult(self.out_dir, list(self.records), time.monotonic() - self.start, self.size)
