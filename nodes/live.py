"""The trainer's live view: small, rate-limited server events that web/break_a_scene.js draws inside the node.

Event name ``break_a_scene.training`` (this pack's own), sent with ComfyUI's ``PromptServer.send_sync`` to the
client that queued the prompt. Every message carries ``node`` (the trainer's unique id) and ``run`` (a new id
per execution: the page clears the view when it changes), and one of these kinds:

- ``progress`` (at most every ``PROGRESS_INTERVAL`` s, and at the first and last step): phase, step, steps,
  done, total, steps per second, seconds left, the concepts (token, name, colour) and the loss history so far
  (``diffusion``, ``attention``, ``total`` per step; bucket means of ``HISTORY_POINTS`` buckets once longer).
  The whole history rides along so that a page reloaded mid-training has the chart again at the next event.
- ``maps`` (at each attention preview of the engine): the training image (JPEG, longest side ``IMAGE_SIZE``)
  and each handle's latest cross-attention map (greyscale PNG, at most ``MAP_SIZE`` px), as data URLs.
- ``done``: the final losses, history and maps; ``cached`` says the pack was loaded instead of trained (then
  they are what the pack stored when it was trained).

The same snapshot is stored in the pack's metadata (``meta["live_view"]``), so a cache hit shows it again.
Nothing here touches the engine's training state; the previews come from the engine's callbacks.
"""
from __future__ import annotations

import base64
import io
import logging
import sys
import time
import uuid

EVENT = "break_a_scene.training"
PROGRESS_INTERVAL = 0.5     # seconds between progress events (the chart does not need more)
HISTORY_POINTS = 300        # loss points per series sent to the page
IMAGE_SIZE = 192            # longest side of the training image under the maps
MAP_SIZE = 64               # largest side of a sent attention map
SERIES = {"diffusion": "diffusion", "attention": "attention", "total": "loss"}   # chart name -> engine loss key

log = logging.getLogger("break_a_scene")


def concept_colors(count: int) -> list[str]:
    """The concepts' colours as #rrggbb, the palette of the engine's preview pictures."""
    from ..bas_engine.preview import PALETTE

    return ["#%02x%02x%02x" % tuple(int(round(c * 255)) for c in PALETTE[i % len(PALETTE)]) for i in range(count)]


def concepts_info(tokens: list[str], names: list[str]) -> list[dict]:
    return [{"token": t, "name": n, "color": c} for t, n, c in zip(tokens, names, concept_colors(len(tokens)))]


def downsample(values: list[float], points: int = HISTORY_POINTS) -> tuple[list[int], list[float]]:
    """(step numbers, values): every value when short, else the mean of `points` equal buckets (at their end)."""
    n = len(values)
    if n <= points:
        return list(range(1, n + 1)), [round(v, 6) for v in values]
    steps, out = [], []
    for b in range(points):
        lo, hi = b * n // points, (b + 1) * n // points
        chunk = values[lo:hi]
        steps.append(hi)
        out.append(round(sum(chunk) / len(chunk), 6))
    return steps, out


def _data_url(picture, kind: str) -> str:
    buffer = io.BytesIO()
    if kind == "jpeg":
        picture.convert("RGB").save(buffer, "JPEG", quality=80)
    else:
        picture.save(buffer, "PNG", optimize=True)
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_url(image) -> str:
    """(3, H, W) tensor in [0, 1] -> JPEG data URL, longest side IMAGE_SIZE."""
    from PIL import Image

    array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    picture = Image.fromarray(array)
    picture.thumbnail((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    return _data_url(picture, "jpeg")


def map_urls(maps) -> list[str]:
    """(N, h, w) maps in [0, 1] -> one greyscale PNG data URL each, at most MAP_SIZE px a side."""
    from PIL import Image

    urls = []
    for heat in maps.detach().float().cpu().clamp(0, 1).numpy():
        picture = Image.fromarray((heat * 255).round().astype("uint8"), "L")
        if max(picture.size) > MAP_SIZE:
            picture.thumbnail((MAP_SIZE, MAP_SIZE), Image.BILINEAR)
        urls.append(_data_url(picture, "png"))
    return urls


def _server():
    """ComfyUI's running PromptServer, or None (nodes run in-process by tests, without a server)."""
    module = sys.modules.get("server")
    server = getattr(getattr(module, "PromptServer", None), "instance", None)
    return server if hasattr(server, "send_sync") else None


class LiveView:
    """Collects one training run's losses and previews and sends them to the page (see the module docstring)."""

    def __init__(self, node_id, tokens: list[str], names: list[str], send=None, clock=time.monotonic):
        self.node = None if node_id is None else str(node_id)
        self.run = uuid.uuid4().hex[:12]
        self.concepts = concepts_info(tokens, names)
        self.losses: dict[str, list[float]] = {name: [] for name in SERIES}
        self.maps: dict | None = None
        self.clock = clock
        self.started = clock()
        self.last_sent = None
        self.rate_window: list[tuple[float, int]] = []
        self._send = send

    # -- sending
    def send(self, kind: str, **data) -> None:
        if self.node is None:
            return
        message = {"kind": kind, "node": self.node, "run": self.run, **data}
        if self._send is not None:
            self._send(EVENT, message)
            return
        server = _server()
        if server is None:
            return
        try:
            server.send_sync(EVENT, message, getattr(server, "client_id", None))
        except Exception as exc:    # the view is a nicety: never let it break a training run
            log.debug("Break-A-Scene live view: could not send %s (%s)", kind, exc)

    def history(self) -> dict:
        out = {}
        for name, values in self.losses.items():
            steps, points = downsample(values)
            out[name] = points
            out.setdefault("steps", steps)
        return out

    # -- engine callbacks
    def on_progress(self, event) -> None:
        for name, key in SERIES.items():
            value = event.losses.get(key)
            self.losses[name].append(float(value) if value is not None else float("nan"))
        now = self.clock()
        self.rate_window.append((now, event.done))
        self.rate_window = self.rate_window[-50:]
        first, last = event.done == 1, event.done == event.total
        if not (first or last or self.last_sent is None or now - self.last_sent >= PROGRESS_INTERVAL):
            return
        self.last_sent = now
        (t0, d0), (t1, d1) = self.rate_window[0], self.rate_window[-1]
        if d1 > d0 and t1 > t0:
            rate = (d1 - d0) / (t1 - t0)
        else:
            rate = event.done / max(now - self.started, 1e-6)
        self.send("progress", phase=event.phase, step=event.step, steps=event.steps, done=event.done,
                  total=event.total, rate=round(rate, 4), eta=round((event.total - event.done) / max(rate, 1e-9), 1),
                  concepts=self.concepts, history=_finite(self.history()))

    def on_preview(self, event) -> None:
        maps = event.maps.flip(-1) if event.flipped else event.maps     # shown over the unflipped image
        self.maps = {"image": image_url(event.image.flip(-1) if event.flipped else event.image),
                     "maps": map_urls(maps), "chosen": list(event.chosen), "phase": event.phase, "step": event.step}
        self.send("maps", concepts=self.concepts, **self.maps)

    # -- end of a run
    def snapshot(self) -> dict:
        """What the pack stores and a cache hit shows: concepts, loss history, latest maps."""
        return {"concepts": self.concepts, "history": _finite(self.history()), **(self.maps or {})}

    def finish(self, losses: dict) -> None:
        self.send("done", cached=False, losses=losses, **self.snapshot())


def send_cached(node_id, pack) -> None:
    """A cache hit: show the final losses (and history and maps when the pack stored them) of the saved pack."""
    stored = dict(pack.meta.get("live_view") or {})
    view = LiveView(node_id, list(pack.tokens), list(pack.names))
    stored["concepts"] = view.concepts
    view.send("done", cached=True, losses=pack.meta.get("losses") or {}, **stored)


def _finite(history: dict) -> dict:
    """JSON has no NaN: a loss the run does not have (attention off) is sent as null."""
    return {k: [None if isinstance(v, float) and v != v else v for v in vs] for k, vs in history.items()}
