"""Atomic writes: a file appears whole under its final name, or not at all."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

import torch
from safetensors.torch import save_file


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on error removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp (and safetensors) create owner-only files; give the file the usual umask permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """safetensors.save_file through a temporary file, so an interrupted write leaves nothing behind."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_save_image(picture, path: str | os.PathLike) -> None:
    """Save a PIL image atomically; the format follows the final name's extension."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    with atomic_path(path) as tmp:
        picture.save(tmp, format=fmt)
