"""Preview pictures: masks tinted over the image, attention maps per handle, the loss curve."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

# Well-separated tints, one per concept (cycled past eight).
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60)], dtype=np.float32) / 255.0


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, colour: tuple[int, int, int]) -> None:
    x, y = xy
    box = draw.textbbox((x, y), text)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((x, y), text, fill=colour)


def mask_overlay(image: torch.Tensor, masks: torch.Tensor, labels: Sequence[str], alpha: float = 0.55) -> Image.Image:
    """The image with each (soft) mask tinted in its own colour and labelled at its centre of mass."""
    pixels = image.detach().float().cpu().permute(1, 2, 0).numpy()
    out = pixels.copy()
    masks = masks.detach().float().cpu()
    for i, mask in enumerate(masks.numpy()):
        weight = (mask * alpha)[..., None]
        out = out * (1 - weight) + PALETTE[i % len(PALETTE)] * weight
    picture = Image.fromarray((out.clip(0, 1) * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for i, (mask, label) in enumerate(zip(masks, labels)):
        total = float(mask.sum())
        if total <= 0:
            continue
        ys, xs = torch.meshgrid(torch.arange(mask.shape[0]), torch.arange(mask.shape[1]), indexing="ij")
        cy, cx = float((ys * mask).sum() / total), float((xs * mask).sum() / total)
        colour = tuple(int(c * 255) for c in PALETTE[i % len(PALETTE)])
        _label(draw, (int(cx) - 3 * len(label), int(cy) - 5), label, colour)
    return picture


def attention_overlay(image: torch.Tensor, maps: torch.Tensor, labels: Sequence[str],
                      chosen: Sequence[bool] | None = None, tile: int = 192) -> Image.Image:
    """One tile per handle: its attention map (already divided by its max) as a heat tint over the image."""
    base = F.interpolate(image[None].float().cpu(), size=(tile, tile), mode="bilinear", align_corners=False)[0]
    tiles = []
    for i, label in enumerate(labels):
        heat = F.interpolate(maps[i][None, None].float().cpu(), size=(tile, tile), mode="bilinear",
                             align_corners=False)[0, 0].clamp(0, 1)
        colour = torch.tensor(PALETTE[i % len(PALETTE)])[:, None, None]
        tinted = base * 0.35 + heat[None] * colour * 0.65  # dimmed image, handle colour where it attends
        picture = _to_pil(tinted.clamp(0, 1))
        text = label if chosen is None or chosen[i] else f"{label} (not in prompt)"
        _label(ImageDraw.Draw(picture), (4, 4), text, (255, 255, 255))
        tiles.append(picture)
    sheet = Image.new("RGB", (tile * len(tiles), tile))
    for i, picture in enumerate(tiles):
        sheet.paste(picture, (i * tile, 0))
    return sheet


def loss_curve(history: dict[str, Sequence[float]], size: tuple[int, int] = (384, 192)) -> Image.Image:
    """A small line plot of each loss series (log scale), drawn with PIL only."""
    width, height = size
    picture = Image.new("RGB", size, (24, 24, 24))
    draw = ImageDraw.Draw(picture)
    series = {k: np.log10(np.maximum(np.asarray(v, dtype=np.float64), 1e-8)) for k, v in history.items() if len(v)}
    if not series:
        return picture
    low = min(float(v.min()) for v in series.values())
    high = max(float(v.max()) for v in series.values())
    span = max(high - low, 1e-6)
    for i, (name, values) in enumerate(series.items()):
        colour = tuple(int(c * 255) for c in PALETTE[i % len(PALETTE)])
        xs = np.linspace(4, width - 4, num=max(len(values), 2))[:len(values)]
        ys = height - 16 - (values - low) / span * (height - 32)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
        _label(draw, (6 + 90 * i, height - 12), name, colour)
    return picture


def stack_vertically(pictures: Sequence[Image.Image]) -> Image.Image:
    width = max(p.width for p in pictures)
    sheet = Image.new("RGB", (width, sum(p.height for p in pictures)), (0, 0, 0))
    y = 0
    for picture in pictures:
        sheet.paste(picture, (0, y))
        y += picture.height
    return sheet


def pil_to_tensor(picture: Image.Image) -> torch.Tensor:
    """(H, W, 3) float in [0, 1] — ComfyUI's IMAGE layout without the batch axis."""
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)
