"""Run a real, headless ComfyUI server with this node pack and talk to it over HTTP and the websocket.

Plain helpers for tests/comfy/test_server*.py (no ComfyUI import: the server runs in its own process, with
ComfyUI's venv).  Contents:

- ``ComfyServer``: start ``main.py --cpu --listen 127.0.0.1 --port N --base-directory TMP`` with the pack symlinked
  into TMP/custom_nodes, wait for /object_info, queue prompts, wait for /history, interrupt, read the server's
  RSS, always stop it (``stop()`` is idempotent and also registered with atexit).
- ``ui_to_api``, ``api_problems``, ``patch_inputs``…: the example workflows as API graphs, from ``workflow_api``
  (re-exported here).
- ``WebSocket``: a blocking client for ws://host:port/ws?clientId=... on aiohttp (in ComfyUI's venv)
- fixture builders: the cached random-weight SD checkpoints (same cache and names as
  tests/comfy/test_comfy_convert.py) and a random-weight SD1.5-shaped ControlNet in the original
  (ldm "zero_convs"/"input_hint_block") format that ComfyUI's ControlNetLoader detects as SD15.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from workflow_api import (  # noqa: F401  (the harness's callers use these as server_harness.X)
    EXAMPLE_WORKFLOWS, ConversionError, api_problems, clone, is_widget, load_workflow, nodes_of, ordered_inputs,
    patch_inputs, ui_schema_problems, ui_to_api, widget_inputs,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PACK_FOLDER = "ComfyUI-Break-A-Scene"
SCENES = os.environ.get("BAS_SHARED_SCENES") or os.path.normpath(os.path.join(REPO, "..", "shared", "scenes"))
CACHE = os.environ.get("BAS_TEST_CACHE", os.path.join(REPO, ".cache", "test_models"))  # as comfy_fixtures.CACHE
#: the node pack folder linked into the server's custom_nodes (default: this checkout)
PACK_DIR = os.path.abspath(os.environ.get("BAS_PACK_DIR") or REPO)

# ------------------------------------------------------------------------------------------ fixture models

CONTROLNET_VERSION = 1


def _ensure_import_paths() -> None:
    for path in (REPO, os.path.join(REPO, "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)


def fixture_checkpoint(name: str) -> str:
    """Path of the cached random-weight checkpoint ``sd15`` (SD1.5-shaped) or ``sd20v`` (SD2, v-prediction)."""
    _ensure_import_paths()
    from comfy_fixtures import cached_checkpoint

    return cached_checkpoint(name)


def controlnet_to_ldm(controlnet, unet) -> dict:
    """State dict of a diffusers ControlNetModel under the original ControlNet names (no ``control_model.``
    prefix): the UNet-shared parts by ``bas_engine.ldm.diffusers_to_ldm_unet_keys``, plus
    controlnet_down_blocks.i -> zero_convs.i.0, controlnet_mid_block -> middle_block_out.0 and the conditioning
    embedding (conv_in, blocks.j, conv_out) -> input_hint_block.{0, 2(j+1), 2(n+1)}."""
    from bas_engine.ldm import diffusers_to_ldm_unet_keys

    unet_map = diffusers_to_ldm_unet_keys(unet)
    sd = controlnet.state_dict()
    n_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key in unet_map:
            new = unet_map[key]
        elif parts[0] == "controlnet_down_blocks":
            new = f"zero_convs.{parts[1]}.0.{parts[2]}"
        elif parts[0] == "controlnet_mid_block":
            new = f"middle_block_out.0.{parts[1]}"
        elif parts[0] == "controlnet_cond_embedding":
            if parts[1] == "conv_in":
                index = 0
            elif parts[1] == "blocks":
                index = 2 * (int(parts[2]) + 1)
            elif parts[1] == "conv_out":
                index = 2 * (n_blocks + 1)
            else:
                raise KeyError(key)
            new = f"input_hint_block.{index}.{parts[-1]}"
        else:
            raise KeyError(f"no original name for ControlNet parameter {key}")
        out[new] = value
    return out


def fixture_controlnet() -> str:
    """A random-weight ControlNet for the sd15 fixture's UNet layout (diffusers ``ControlNetModel.from_unet``,
    weights randomised, zero convolutions included so that it changes the result), saved fp16 in the original
    ControlNet format.  ComfyUI's diffusers-format ControlNet path only accepts the full SD1.5/SD2/SDXL layouts,
    so the original format is the one that loads for a reduced layout."""
    path = os.path.join(CACHE, f"controlnet-sd15-v{CONTROLNET_VERSION}.safetensors")
    if os.path.exists(path):
        return path
    _ensure_import_paths()
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    from comfy_fixtures import FIXTURES, _randomize, sd_unet_config

    unet = UNet2DConditionModel(**sd_unet_config(**FIXTURES["sd15"]))
    controlnet = ControlNetModel.from_unet(unet)
    _randomize(controlnet, torch.Generator().manual_seed(7))
    sd = {k: v.to(torch.float16).contiguous() for k, v in controlnet_to_ldm(controlnet, unet).items()}
    os.makedirs(CACHE, exist_ok=True)
    tmp = path + ".part.safetensors"
    save_file(sd, tmp)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------ scene inputs

def copy_scene_inputs(input_dir: str, scene: str = "creature") -> list[str]:
    """Copy ../shared/scenes/<scene>/img.jpg and mask*.png into input_dir as <scene>.jpg and
    <scene>_mask<i>.png (the names the example workflows use).  Returns the mask file names."""
    src = os.path.join(SCENES, scene)
    os.makedirs(input_dir, exist_ok=True)
    shutil.copyfile(os.path.join(src, "img.jpg"), os.path.join(input_dir, f"{scene}.jpg"))
    masks = sorted(f for f in os.listdir(src) if f.startswith("mask") and f.endswith(".png"))
    names = []
    for i, _ in enumerate(masks):
        name = f"{scene}_mask{i}.png"
        shutil.copyfile(os.path.join(src, f"mask{i}.png"), os.path.join(input_dir, name))
        names.append(name)
    return names


def write_edit_target(input_dir: str, scene: str = "creature", mask_index: int = 1, size: int = 64,
                      name: str = "edit_target.png") -> str:
    """An RGBA picture as ComfyUI's mask editor saves it: the scene image at ``size`` px, alpha 0 where
    ``mask<mask_index>`` is set (LoadImage's MASK output is 1 - alpha)."""
    import numpy as np
    from PIL import Image

    src = os.path.join(SCENES, scene)
    image = Image.open(os.path.join(src, "img.jpg")).convert("RGB").resize((size, size), Image.BICUBIC)
    mask = Image.open(os.path.join(src, f"mask{mask_index}.png")).convert("L").resize((size, size), Image.BILINEAR)
    alpha = np.where(np.asarray(mask) > 127, 0, 255).astype(np.uint8)
    rgba = np.dstack([np.asarray(image), alpha])
    Image.fromarray(rgba, "RGBA").save(os.path.join(input_dir, name))
    return name


# ------------------------------------------------------------------------------------------ websocket

class WebSocket:
    """Client of ComfyUI's /ws on aiohttp (ComfyUI's own HTTP library, so it is in ComfyUI's venv), used from
    synchronous test code through a private event loop: text frames -> dict (JSON), binary frames -> bytes."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 30.0):
        import aiohttp

        self._aiohttp = aiohttp
        self._loop = asyncio.new_event_loop()
        self.closed = False

        async def connect():
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout))
            try:
                return session, await session.ws_connect(f"http://{host}:{port}{path}", heartbeat=None,
                                                         max_msg_size=0)
            except BaseException:
                await session.close()
                raise

        try:
            self._session, self._ws = self._loop.run_until_complete(connect())
        except aiohttp.ClientError as exc:
            self._loop.close()
            raise ConnectionError(f"websocket {path}: {exc}") from exc

    def recv(self, timeout: float | None = None):
        """Next message: dict for a JSON text frame, bytes for a binary frame, None on timeout."""
        kind = self._aiohttp.WSMsgType
        try:
            message = self._loop.run_until_complete(self._ws.receive(timeout=timeout))
        except asyncio.TimeoutError:
            return None
        if message.type == kind.TEXT:
            return json.loads(message.data)
        if message.type == kind.BINARY:
            return message.data
        self.closed = True
        raise ConnectionError(f"websocket closed by the server ({message.type.name})")

    def close(self) -> None:
        async def shutdown():
            if not self._ws.closed:
                await self._ws.close()
            await self._session.close()

        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(shutdown())
        finally:
            self.closed = True
            self._loop.close()


# ------------------------------------------------------------------------------------------ server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServerDied(RuntimeError):
    pass


class ComfyServer:
    """A headless ComfyUI in its own process group, on 127.0.0.1:<free port>, with a throwaway base directory."""

    def __init__(self, comfy_path: str, *, python: str | None = None, base_dir: str | None = None,
                 checkpoints: dict[str, str] | None = None, controlnets: dict[str, str] | None = None,
                 models: dict[str, dict[str, str]] | None = None, custom_nodes: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        """checkpoints / controlnets / models ({folder: {name: file}}, e.g. "diffusion_models", "text_encoders",
        "vae"): files linked into the server's models/ folders; custom_nodes ({name: folder}): test-only node
        packages linked beside this pack."""
        self.comfy_path = os.path.abspath(comfy_path)
        # The tests run with ComfyUI's interpreter (tests/comfy/conftest.py checks it imports ComfyUI): the server
        # uses the same one unless COMFYUI_PYTHON names another.
        self.python = python or os.environ.get("COMFYUI_PYTHON") or sys.executable
        self._own_base = base_dir is None
        self.base = base_dir or tempfile.mkdtemp(prefix="bas-comfy-")
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.base, "server.log")
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        for sub in ("custom_nodes", "models/checkpoints", "models/controlnet", "models/loras", "models/embeddings",
                    "models/break_a_scene", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        link = os.path.join(self.base, "custom_nodes", PACK_FOLDER)
        if not os.path.lexists(link):
            os.symlink(PACK_DIR, link)
        for name, target in (custom_nodes or {}).items():
            path = os.path.join(self.base, "custom_nodes", name)
            if not os.path.lexists(path):
                os.symlink(os.path.abspath(target), path)
        folders = {"checkpoints": checkpoints or {}, "controlnet": controlnets or {}, **(models or {})}
        for folder, files in folders.items():
            os.makedirs(os.path.join(self.base, "models", folder), exist_ok=True)
            for name, target in files.items():
                path = os.path.join(self.base, "models", folder, name)
                if not os.path.lexists(path):
                    os.symlink(os.path.abspath(target), path)

    # ---- paths
    def path(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)

    @property
    def input_dir(self) -> str:
        return self.path("input")

    @property
    def output_dir(self) -> str:
        return self.path("output")

    @property
    def packs_dir(self) -> str:
        return self.path("models", "break_a_scene")

    # ---- process
    def start(self, timeout: float = 300.0) -> "ComfyServer":
        cmd = [self.python, os.path.join(self.comfy_path, "main.py"), "--cpu", "--listen", self.host,
               "--port", str(self.port), "--base-directory", self.base, "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes", *self.extra_args]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1",
                   PYTHONUNBUFFERED="1", **self.extra_env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive()
            try:
                self.object_info = self.get("/object_info", timeout=30)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer /object_info in {timeout:.0f} s\n{self.log_tail()}")

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerDied(f"ComfyUI exited with code {self.proc.returncode}\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - chars))
                return "--- server log (tail) ---\n" + fh.read().decode(errors="replace")
        except OSError:
            return "(no server log)"

    def log_text(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")

    # ---- HTTP
    def request(self, method: str, route: str, body=None, timeout: float = 60.0) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw.decode() or "null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, route: str, timeout: float = 60.0):
        status, payload = self.request("GET", route, timeout=timeout)
        if status != 200:
            raise ConnectionError(f"GET {route}: HTTP {status}: {payload}")
        return payload

    def healthy(self) -> bool:
        try:
            return self.alive() and self.request("GET", "/system_stats", timeout=20)[0] == 200
        except OSError:
            return False

    def queue(self, api: dict, *, client_id: str | None = None) -> tuple[int, dict]:
        """POST /prompt: (HTTP status, reply).  200: {"prompt_id", "number", "node_errors"};
        400: {"error", "node_errors"} (validation failed before running)."""
        return self.request("POST", "/prompt", {"prompt": api, "client_id": client_id or self.client_id})

    def history(self, prompt_id: str) -> dict | None:
        entry = self.get(f"/history/{prompt_id}")
        return entry.get(prompt_id) if entry else None

    def wait(self, prompt_id: str, timeout: float = 900.0, poll: float = 0.5) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive()
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            time.sleep(poll)
        raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s\n{self.log_tail()}")

    def run(self, api: dict, timeout: float = 900.0) -> "Result":
        status, reply = self.queue(api)
        if status != 200:
            return Result(None, reply, status)
        return Result(self.wait(reply["prompt_id"], timeout), reply, status)

    def run_ws(self, api: dict, timeout: float = 900.0, on_event=None) -> tuple["Result", list[dict], int]:
        """Queue api and follow it on the websocket until it ends (success, error or interruption).

        ``on_event(type, data)`` is called for every JSON message of this prompt (binary frames: type "binary",
        data the bytes).  Returns (result from /history, JSON messages of this prompt, binary frame count)."""
        ws = self.websocket()
        try:
            status, reply = self.queue(api)
            if status != 200:
                return Result(None, reply, status), [], 0
            prompt_id = reply["prompt_id"]
            events: list[dict] = []
            binaries = 0
            deadline = time.time() + timeout
            while time.time() < deadline:
                self._check_alive()
                message = ws.recv(timeout=2.0)
                if message is None:
                    if self.history(prompt_id) is not None:
                        break
                    continue
                if isinstance(message, bytes):
                    binaries += 1
                    if on_event:
                        on_event("binary", message)
                    continue
                data = message.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                events.append(message)
                if on_event:
                    on_event(message.get("type"), data)
                kind = message.get("type")
                if kind in ("execution_success", "execution_error", "execution_interrupted") or (
                        kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id):
                    break
            else:
                raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s\n{self.log_tail()}")
            return Result(self.wait(prompt_id, timeout=120), reply, status), events, binaries
        finally:
            ws.close()

    def interrupt(self, prompt_id: str | None = None) -> int:
        return self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})[0]

    def websocket(self, client_id: str | None = None) -> WebSocket:
        return WebSocket(self.host, self.port, f"/ws?clientId={client_id or self.client_id}")

    def output_files(self, result: "Result") -> list[str]:
        """Absolute paths of the images the prompt's output nodes saved (type "output")."""
        files = []
        for ui in (result.entry or {}).get("outputs", {}).values():
            for image in ui.get("images", []):
                if image.get("type") == "output":
                    files.append(os.path.join(self.output_dir, image.get("subfolder", ""), image["filename"]))
        return files


class Result:
    """Outcome of one prompt: validation reply and /history entry."""

    def __init__(self, entry: dict | None, reply: dict, http_status: int):
        self.entry, self.reply, self.http_status = entry, reply, http_status

    @property
    def status(self) -> str:
        if self.entry is None:
            return "rejected"
        return self.entry.get("status", {}).get("status_str", "?")

    @property
    def messages(self) -> list:
        return (self.entry or {}).get("status", {}).get("messages", [])

    def events(self, name: str) -> list[dict]:
        return [data for event, data in self.messages if event == name]

    @property
    def error(self) -> dict | None:
        errors = self.events("execution_error")
        return errors[0] if errors else None

    def error_text(self) -> str:
        """The user-facing error: execution_error's type + message, or the validation errors of a 400."""
        if self.entry is None:
            parts = [json.dumps(self.reply.get("error", {}))]
            for node_id, node_error in (self.reply.get("node_errors") or {}).items():
                for err in node_error.get("errors", []):
                    parts.append(f"{node_id}: {err.get('message')}: {err.get('details')}")
            return "\n".join(parts)
        err = self.error
        if err is None:
            return ""
        return f"{err.get('exception_type')}: {err.get('exception_message')}"

    def describe(self) -> str:
        if self.entry is None:
            return f"rejected (HTTP {self.http_status}): {self.error_text()}"
        text = f"status {self.status}"
        if self.error:
            err = self.error
            text += (f"; error in node {err.get('node_id')} ({err.get('node_type')}): {self.error_text()}\n"
                     + "".join(err.get("traceback", [])[-6:]))
        return text


#: glibc's malloc serving blocks of 64 KiB or more by mmap and trimming freed heap: RSS then follows live memory
#: (why and the figures: tests/comfy/test_server.py, above its RSS_TOLERANCE)
SERVER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


@contextlib.contextmanager
def started_server(comfyui_path: str, scene: str = "creature", **options):
    """A started ComfyServer (``options`` as ComfyServer takes them) with ``scene``'s inputs and SERVER_ENV; stopped
    and removed afterwards."""
    server = ComfyServer(comfyui_path, env=dict(SERVER_ENV), **options)
    try:
        copy_scene_inputs(server.input_dir, scene)
        server.start()
        yield server
    finally:
        server.stop()
        server.cleanup()


def run_tiny_extraction(server, api: dict, latent_class: str, timeout: int = 1500) -> list[str]:
    """Run an extract-and-generate graph as CI affords it (1 + 1 training steps, 64 px, rank 4, 2 sampling
    steps); asserts it succeeded with non-empty outputs and returns the output files."""
    patch_inputs(api, "BreakASceneTrainer", phase1_steps=1, phase2_steps=1, resolution=64, lora_rank=4)
    patch_inputs(api, latent_class, width=64, height=64, batch_size=1)
    patch_inputs(api, "KSampler", steps=2, seed=0)
    result = server.run(api, timeout=timeout)
    assert result.status == "success", f"{result.describe()}\n{server.log_tail()}"
    files = server.output_files(result)
    assert files and all(os.path.getsize(f) > 0 for f in files), json.dumps(result.entry.get("outputs"))[:500]
    return files


def read_pack(server, name: str) -> tuple[dict, set[str]]:
    """(the "bas" metadata, the tensor names) of the pack ``name`` the server saved."""
    from safetensors import safe_open

    with safe_open(os.path.join(server.packs_dir, f"{name}.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["bas"]), set(f.keys())
