"""Prior preservation: class images generated once with the base model and cached on disk."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from PIL import Image

from .fileio import atomic_path
from .components import SDComponents


def class_image_dir(cache_root: str, fingerprint: str, prompt: str, size: tuple[int, int]) -> str:
    key = hashlib.sha256(f"{fingerprint}|{prompt}|{size}".encode()).hexdigest()[:16]
    return os.path.join(cache_root, "class_images", key)


def class_images(components: SDComponents, prompt: str, count: int, size: tuple[int, int], steps: int,
                 cache_root: str, seed: int = 0) -> list[torch.Tensor]:
    """`count` images of `prompt` from the base model as (3, H, W) in [0, 1]; generated once, then read back."""
    from .generate import build_pipeline

    folder = class_image_dir(cache_root, components.fingerprint(), prompt, size)
    os.makedirs(folder, exist_ok=True)
    pipe = None
    images = []
    for i in range(count):
        path = os.path.join(folder, f"{i:04d}.png")
        if not os.path.exists(path):
            if pipe is None:
                pipe = build_pipeline(components)
            generator = torch.Generator("cpu").manual_seed(seed * 100003 + i)
            with torch.no_grad():
                image = pipe(prompt, height=size[0], width=size[1], num_inference_steps=steps,
                             generator=generator).images[0]
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(array).permute(2, 0, 1))
    return images
