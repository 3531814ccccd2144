"""Progress, cancellation and preview hooks for a training run."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import Cancelled


@dataclass
class ProgressEvent:
    phase: int               # 1 or 2
    step: int                # 1-based step within the phase
    steps: int               # steps in this phase
    done: int                # steps done over both phases
    total: int               # steps of both phases
    losses: dict[str, float]


@dataclass
class PreviewEvent:
    phase: int
    step: int
    done: int
    total: int
    image: torch.Tensor      # (3, H, W) training image in [0, 1], flipped as in this step
    maps: torch.Tensor       # (N, h, w) attention of each handle, divided by its max (zeros if not chosen)
    chosen: list[bool]       # which handles were in this step's prompt
    tokens: list[str]
    flipped: bool = False    # this step's image (and so the maps) were mirrored; flip maps back to compare with masks


@dataclass
class TrainCallbacks:
    """Optional hooks; `should_cancel` is checked before every step."""

    on_progress: Callable[[ProgressEvent], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_preview: Callable[[PreviewEvent], None] | None = None
    preview_every: int = 50

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("training was cancelled")
