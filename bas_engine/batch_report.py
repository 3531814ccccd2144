"""What `bas batch` reports: the records of a batch (OUT/batch.jsonl, `BatchResult`) and its progress line."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

LOG_NAME = "batch.jsonl"
#: a progress line at most this often when stderr is not a terminal (CI logs, nohup, cluster job logs)
LOG_PROGRESS_EVERY_S = 30.0


@dataclass
class BatchResult:
    """What a batch did: one record per scene (as in OUT/batch.jsonl)."""

    out_dir: str
    records: list[dict]
    seconds: float = 0.0
    workers: int = 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.records if r["status"] == status)

    @property
    def ok(self) -> bool:
        """True when no scene failed or was cancelled."""
        return all(r["status"] in ("done", "skipped") for r in self.records)

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("done", "failed", "skipped", "cancelled") if self.count(s)]
        text = ", ".join(parts) or "nothing to do"
        if self.count("skipped"):
            text += " (skipped: already in the output with the same model, scene and settings)"
        return f"{text}; {len(self.records)} scenes in {clock(self.seconds)} on {self.workers} worker(s)"


class RecordLog:
    """OUT/batch.jsonl: a line appended as each scene finishes (one write each, so a crash keeps what was
    done), then rewritten atomically at the end with exactly one record per scene, in input order."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, LOG_NAME)

    def append(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def finish(self, records: list[dict]) -> None:
        from .fileio import atomic_write_text

        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """One bar over the scenes on stderr: done / failed / skipped, scenes per minute, time left.

    On a terminal a tqdm bar; otherwise a plain line at most every LOG_PROGRESS_EVERY_S seconds, so a
    10,000-scene batch does not fill a log file with carriage-return frames.
    """

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.trained = 0                 # scenes a worker spent time on (the rate ignores instant skips)
        self.start = time.monotonic()
        self.last_line = 0.0
        self.last_printed = -1           # scenes finished at the last plain line
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="scene", file=self.stream, dynamic_ncols=True,
                            bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} scenes [{elapsed}{postfix}]")

    def status(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.trained / elapsed * 60
        left = self.total - sum(self.counts.values())
        eta = f", ~{clock(left / rate * 60)} left" if rate > 0 and left else ""
        c = self.counts
        return f"done {c['done']}, failed {c['failed']}, skipped {c['skipped']}, {rate:.2f} scenes/min{eta}"

    def update(self, status: str, trained: bool) -> None:
        if status in self.counts:
            self.counts[status] += 1
        self.trained += int(trained)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self.status(), refresh=False)
            self.bar.update(1)
        elif time.monotonic() - self.last_line >= LOG_PROGRESS_EVERY_S:
            self.line()

    def line(self) -> None:
        self.last_line = time.monotonic()
        done = sum(self.counts.values())
        self.last_printed = done
        print(f"bas batch: {done}/{self.total} scenes ({self.status()})", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.status())
            self.bar.close()
        elif self.enabled and self.last_printed != sum(self.counts.values()):
            self.line()
