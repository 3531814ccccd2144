"""`bas batch` / bas_engine.batch on a local Ray with the committed toy model (CPU, a few steps per scene).

One Ray session serves the whole module (starting Ray and its workers is the slow part); the CLI test
joins it with --address, as a second machine would join a cluster.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

try:
    import ray
except ImportError as exc:   # the test extra installs it (scripts/setup.sh); a missing ray is a setup error
    raise ImportError("tests/test_batch.py needs ray: pip install -e '.[test]'") from exc

from bas_engine import cli
from bas_engine.batch import BatchInterrupted, _CtrlC, run_batch
from bas_engine.batch_scenes import SceneJob, discover_scenes
from bas_engine.config import TrainConfig
from bas_engine.errors import InputError
from bas_engine.pack import load_pack, read_pack_meta
from bas_toyworld.extraction import DEFAULT_MODEL
from bas_toyworld.world import make_demo_scene, save_scene_dir

torch.set_num_threads(1)      # the workers run one thread each too (--cpus-per-task 1): same sums, same bits

MODEL = str(DEFAULT_MODEL)
STEPS = dict(phase1_steps=2, phase2_steps=2)
SETTINGS = dict(STEPS, resolution=64, lora_rank=4)
EXTRACT_ARGS = ["--phase1-steps", "2", "--phase2-steps", "2", "--resolution", "64", "--lora-rank", "4"]
TOY_SCENES = ["toy0", "toy1", "toy2", "toy3"]
# toy2 brings its own names and seed in scene.json
TOY2_JSON = {"names": ["cross", "star", "ring"], "settings": {"seed": 5}}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> str:
    """Four toy scenes (three novel objects each, loose masks) and one with an empty mask."""
    root = tmp_path_factory.mktemp("scenes")
    for seed, name in enumerate(TOY_SCENES):
        save_scene_dir(make_demo_scene(seed), root / name)
    (root / "toy2" / "scene.json").write_text(json.dumps(TOY2_JSON))
    broken = save_scene_dir(make_demo_scene(9), root / "broken")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(broken / "mask1.png")
    return str(root)


@pytest.fixture(scope="module")
def first_run(ray_session, scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch_out")
    result = run_batch(scenes, MODEL, out, TrainConfig(**SETTINGS), workers=2, progress=False)
    return result, str(out)


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test. A suite started in the background by a script (`nohup`, `&` without
    job control) inherits an ignored SIGINT, and Python then leaves it ignored: a Ctrl-C test would press a key
    nobody listens to. `bas batch` leaves an ignored SIGINT alone on purpose (the last test below checks it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _listen_to_sigint() -> None:
    """In a child before it runs Python: SIGINT back to the default, so the child's Python installs its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _records(out: str) -> dict[str, dict]:
    with open(os.path.join(out, "batch.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == len({r["scene"] for r in records}), "one record per scene"
    return {r["scene"]: r for r in records}


def _tensors_and_meta(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_packs_for_good_scenes_and_a_failure_record_for_the_broken_one(first_run):
    result, out = first_run
    records = _records(out)
    assert sorted(records) == sorted(TOY_SCENES + ["broken"])
    for name in TOY_SCENES:
        record = records[name]
        assert record["status"] == "done", record
        assert record["seconds"] > 0 and record["attempts"] == 1 and record["error"] is None
        assert set(record["losses"]) >= {"phase1_loss", "phase2_loss"}
        pack = load_pack(os.path.join(out, f"{name}.safetensors"))
        assert pack.meta["losses"] == record["losses"]
        assert pack.meta["settings"]["phase2_steps"] == 2
    assert load_pack(os.path.join(out, "toy2.safetensors")).names == TOY2_JSON["names"]
    assert read_pack_meta(os.path.join(out, "toy2.safetensors"))["settings"]["seed"] == 5
    broken = records["broken"]
    assert broken["status"] == "failed" and re.search(r"mask ?1", broken["error"]) and "empty" in broken["error"]
    assert not os.path.exists(os.path.join(out, "broken.safetensors"))
    assert not result.ok and (result.count("done"), result.count("failed")) == (4, 1)
    assert result.workers == 2
    assert {records[n]["worker"] for n in TOY_SCENES} <= {r["worker"] for r in records.values()}
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_packs_equal_bas_extract(first_run, scenes, tmp_path):
    """Same scene, same seed and settings: the batch's pack holds exactly the tensors and metadata of
    `bas extract`'s (the file bytes differ only in the order safetensors writes its metadata keys)."""
    _, out = first_run
    for name in TOY_SCENES:
        extra = ["--names", ",".join(TOY2_JSON["names"]), "--seed", "5"] if name == "toy2" else []
        target = str(tmp_path / f"{name}.safetensors")
        assert cli.main(["extract", os.path.join(scenes, name), "--model", MODEL, "--out", target,
                         "--device", "cpu", *EXTRACT_ARGS, *extra]) == 0
        batch_tensors, batch_meta = _tensors_and_meta(os.path.join(out, f"{name}.safetensors"))
        extract_tensors, extract_meta = _tensors_and_meta(target)
        assert batch_meta == extract_meta
        assert batch_tensors.keys() == extract_tensors.keys()
        for key, tensor in extract_tensors.items():
            assert tensor.dtype == batch_tensors[key].dtype
            assert torch.equal(tensor, batch_tensors[key]), f"{name}: {key} differs"


def test_second_run_skips_every_finished_scene(first_run, scenes, tmp_path, capsys):
    _, first_out = first_run
    out = str(tmp_path / "rerun")
    shutil.copytree(first_out, out)
    stamps = {n: os.stat(os.path.join(out, f"{n}.safetensors")).st_mtime_ns for n in TOY_SCENES}
    # the command line this time (it uses the Ray this process already runs); exit 1: a scene failed
    assert cli.main(["batch", scenes, "--model", MODEL, "--out", out, "--workers", "1", *EXTRACT_ARGS]) == 1
    printed = capsys.readouterr()
    assert "1 failed, 4 skipped" in printed.out and "failed: broken" in printed.err
    records = _records(out)
    assert [records[n]["status"] for n in TOY_SCENES] == ["skipped"] * 4
    assert records["toy1"]["losses"] == read_pack_meta(os.path.join(out, "toy1.safetensors"))["losses"]
    assert records["broken"]["status"] == "failed"
    assert stamps == {n: os.stat(os.path.join(out, f"{n}.safetensors")).st_mtime_ns for n in TOY_SCENES}

    # another setting for one scene: only that one trains again, and the record says why
    jobs = discover_scenes(scenes)
    jobs = [job for job in jobs if job.name in ("toy0", "toy1")]
    jobs[1].settings = {"seed": 1}
    run_batch(jobs, MODEL, out, TrainConfig(**SETTINGS), workers=1, progress=False)
    records = _records(out)
    assert records["toy0"]["status"] == "skipped"
    assert records["toy1"]["status"] == "done"
    assert records["toy1"]["retrained_because"] == ["other settings (seed)"]
    assert read_pack_meta(os.path.join(out, "toy1.safetensors"))["settings"]["seed"] == 1


def test_a_killed_worker_is_retried_then_given_up(ray_session, scenes, tmp_path):
    """SIGKILL the worker mid-scene: toy0 (killed once) is retried on a fresh worker and done; toy1 (killed
    on both attempts) is recorded as failed after --max-retries 1; the batch goes on."""
    kill_plan = {("toy0", 1), ("toy1", 1), ("toy1", 2)}
    killed = []

    def kill_soon(pid: int) -> None:
        time.sleep(0.7)          # the scene takes seconds: the worker is inside train() by then
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    def on_event(kind: str, info: dict) -> None:
        if kind == "submitted" and (info["scene"], info["attempt"]) in kill_plan:
            threading.Thread(target=kill_soon, args=(info["pid"],), daemon=True).start()

    jobs = [job for job in discover_scenes(scenes) if job.name in ("toy0", "toy1")]
    result = run_batch(jobs, MODEL, tmp_path, TrainConfig(phase1_steps=15, phase2_steps=15, resolution=64,
                                                          lora_rank=4),
                       workers=1, max_retries=1, progress=False, on_event=on_event)
    records = _records(str(tmp_path))
    assert len(killed) == 3
    assert records["toy0"]["status"] == "done" and records["toy0"]["attempts"] == 2
    assert int(records["toy0"]["worker"].rsplit(":", 1)[1]) != killed[0]      # another worker finished it
    load_pack(tmp_path / "toy0.safetensors")
    assert records["toy1"]["status"] == "failed" and records["toy1"]["attempts"] == 2
    assert "worker died 2 time(s)" in records["toy1"]["error"]
    assert not (tmp_path / "toy1.safetensors").exists()
    assert not result.ok


def test_ctrl_c_cancels_the_rest_and_leaves_no_partial_file(ray_session, scenes, tmp_path, python_sigint):
    """`bas batch` joins the running Ray (--address); SIGINT after its first pack: exit 130, the finished
    packs load, no temporary file is left, the records say what was cancelled, the workers are gone."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bas_engine.cli", "batch", scenes, "--model", MODEL, "--out", str(out),
               "--address", ray_session, "--workers", "1", "--phase1-steps", "15", "--phase2-steps", "15",
               "--resolution", "64", "--lora-rank", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_listen_to_sigint)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*.safetensors")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "no partial file" in stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    packs = sorted(p.stem for p in out.glob("*.safetensors"))
    assert 1 <= len(packs) < len(TOY_SCENES)
    for name in packs:
        load_pack(out / f"{name}.safetensors")
    records = _records(str(out))
    assert {r["status"] for r in records.values()} <= {"done", "failed", "cancelled"}
    assert [n for n, r in records.items() if r["status"] == "done"] == packs
    assert any(r["status"] == "cancelled" for r in records.values())
    deadline = time.monotonic() + 30       # the interrupted driver's worker gave its CPU back
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2


class _CtrlCInAFinalizer:
    """Presses Ctrl-C from inside `__del__`, where Python prints an exception as "Exception ignored" and
    drops it: the place a real Ctrl-C lands when the driver's main thread is in a finalizer or in one of
    Ray's C++-to-Python callbacks at that moment."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)            # Python code after the signal: the handler runs here, inside __del__


def test_ctrl_c_that_lands_where_exceptions_are_dropped_still_stops_the_batch(ray_session, scenes, tmp_path,
                                                                               recwarn, python_sigint):
    """run_batch in the main thread: a Ctrl-C delivered inside a finalizer (after the first pack) still
    stops the batch with BatchInterrupted; Python's handler is back in place afterwards."""
    def on_event(kind: str, info: dict) -> None:
        if kind == "record" and info["status"] == "done":
            _CtrlCInAFinalizer()        # dropped at once: __del__ runs here

    jobs = [job for job in discover_scenes(scenes) if job.name in TOY_SCENES]
    with pytest.raises(BatchInterrupted) as caught:
        run_batch(jobs, MODEL, tmp_path, TrainConfig(**SETTINGS), workers=1, progress=False, on_event=on_event)
    # the handler set a flag and raised nothing inside __del__ (pytest reports a dropped exception as a warning)
    assert not [w for w in recwarn if issubclass(w.category, pytest.PytestUnraisableExceptionWarning)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    statuses = [r["status"] for r in caught.value.result.records]
    assert statuses.count("done") == 1 and "cancelled" in statuses, statuses
    assert sorted(p.stem for p in tmp_path.glob("*.safetensors")) == [r["scene"] for r in
                                                                     caught.value.result.records
                                                                     if r["status"] == "done"]


def test_ctrl_c_flag_raises_at_the_check_a_second_press_at_once_and_leaves_other_handlers_alone(python_sigint):
    with _CtrlC() as ctrl_c:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)                        # nothing raised where the signal landed
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
        with pytest.raises(KeyboardInterrupt):  # a second press does not wait for the loop
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)    # as in a job started with `&` by a script
    try:
        with _CtrlC():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_scene_listing_errors_name_the_input(tmp_path, scenes):
    manifest = tmp_path / "scenes.jsonl"
    manifest.write_text(json.dumps({"scene": os.path.join(scenes, "toy0")}) + "\n{not json\n")
    with pytest.raises(InputError, match="line 2"):
        discover_scenes(manifest)
    manifest.write_text("\n".join(json.dumps(e) for e in (
        {"scene": os.path.join(scenes, "toy0"), "name": "a"},
        {"image": os.path.join(scenes, "toy1", "img.png"), "masks": [os.path.join(scenes, "toy1", "mask0.png")],
         "names": "one", "settings": {"seed": 2}},
        {"scene": os.path.join(scenes, "toy2"), "settings": {"no_such_setting": 1}})) + "\n")
    jobs = discover_scenes(manifest)
    assert [j.name for j in jobs] == ["a", "img", "toy2"]
    assert jobs[1].load().num_concepts == 1 and jobs[1].config(TrainConfig()).seed == 2
    with pytest.raises(InputError, match="no_such_setting"):
        jobs[2].config(TrainConfig())
    manifest.write_text(json.dumps({"scene": os.path.join(scenes, "toy0")}) + "\n"
                        + json.dumps({"scene": os.path.join(scenes, "toy0")}) + "\n")
    with pytest.raises(InputError, match="two scenes are named 'toy0'"):
        discover_scenes(manifest)
    with pytest.raises(InputError, match="is one scene folder"):
        discover_scenes(os.path.join(scenes, "toy0"))
    assert isinstance(jobs[0], SceneJob)


def test_progress_lines_are_rate_limited_off_a_terminal():
    """In a log file (no terminal) a 10,000-scene batch writes a few lines, not one per scene."""
    import io

    from bas_engine.batch_report import Progress

    stream = io.StringIO()
    progress = Progress(1000, enabled=True, stream=stream)
    for i in range(1000):
        progress.update("done" if i % 10 else "skipped", trained=bool(i % 10))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2        # the first update, and the end
    assert lines[-1].startswith("bas batch: 1000/1000 scenes (done 900, failed 0, skipped 100,")
