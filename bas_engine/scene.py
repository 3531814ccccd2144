"""Scene input: one image, one loose (soft) mask per concept, concept names and initializer words."""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
EMPTY_MASK_LEVEL = 1e-3


@dataclass
class Scene:
    """One picture with N concepts; `masks[i]` belongs to `names[i]`."""

    image: torch.Tensor                      # (3, H, W) float32 in [0, 1]
    masks: torch.Tensor                      # (N, H, W) float32 in [0, 1], soft
    names: list[str]
    initializers: list[str | None] = field(default_factory=list)

    @property
    def num_concepts(self) -> int:
        return self.masks.shape[0]

    def fingerprint(self) -> str:
        """Hash of pixels, masks, names and initializers: the same scene gives the same string."""
        import hashlib

        digest = hashlib.sha256()
        digest.update((self.image * 255).round().to(torch.uint8).numpy().tobytes())
        digest.update((self.masks * 255).round().to(torch.uint8).numpy().tobytes())
        digest.update(repr((self.names, self.initializers)).encode())
        return digest.hexdigest()[:16]


def _open_image(source: Any, what: str, field: str, item: int | None) -> Image.Image:
    try:
        image = Image.open(source)
        image.load()
        # Photos from phones store their rotation in EXIF; masks painted over them are upright.
        return ImageOps.exif_transpose(image)
    except FileNotFoundError as exc:
        raise InputError(f"{what}: file {source!r} does not exist", field=field, item=item) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{what}: file {source!r} is not a readable image ({exc})", field=field, item=item) from exc


def image_to_tensor(image: Any, what: str = "image") -> torch.Tensor:
    """PIL image, path, HWC/CHW numpy or torch array (uint8 or float in [0, 1]) -> (3, H, W) float32.

    Errors are InputErrors with field "image"; `what` is how their message names the image.
    """
    def error(message: str) -> InputError:
        return InputError(f"{what}: {message}", field="image")

    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image, what, "image", None)
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
    tensor = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).detach().cpu()
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise error(f"expected an image of shape HxWx3 or 3xHxW, got shape {tuple(tensor.shape)}")
    if tensor.shape[-1] in (3, 4) and tensor.shape[0] not in (3, 4):
        tensor = tensor.permute(2, 0, 1)
    if tensor.shape[0] == 4:
        tensor = tensor[:3]
    if tensor.shape[0] != 3:
        raise error(f"expected 3 colour channels, got shape {tuple(tensor.shape)}")
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if tensor.min() < -1e-3 or tensor.max() > 1 + 1e-3:
        raise error(f"float pixel values must lie in [0, 1], got [{tensor.min():.3g}, {tensor.max():.3g}]")
    return tensor.clamp(0, 1).contiguous()


def mask_to_tensor(mask: Any, what: str, item: int | None = None) -> torch.Tensor:
    """A mask from a file, PIL image, numpy or torch array -> (H, W) float32 in [0, 1].

    Colour masks are read from their luminance; when the RGB is constant but alpha varies (a cut-out
    painted in an editor), the mask is the alpha channel. Soft values are kept. Errors are InputErrors with
    field "masks" and the mask's index as `item`; `what` is how their message names the mask.
    """
    def error(message: str) -> InputError:
        return InputError(f"{what}: {message}", field="masks", item=item)

    if isinstance(mask, (str, os.PathLike)):
        mask = _open_image(mask, what, "masks", item)
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
            array = _colour_mask(np.asarray(mask.convert("RGBA"), dtype=np.float32) / 255.0)
        else:
            array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(array))
    tensor = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).detach().cpu()
    if tensor.dtype == torch.bool:
        tensor = tensor.float()
    elif tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    else:
        tensor = tensor.float()
    if tensor.ndim == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim == 3 and tensor.shape[-1] in (3, 4):
        tensor = torch.from_numpy(_colour_mask(tensor.numpy()))
    if tensor.ndim != 2:
        raise error(f"expected a single-channel mask of shape HxW, got shape {tuple(tensor.shape)}")
    if tensor.min() < -1e-3 or tensor.max() > 1 + 1e-3:
        raise error(f"mask values must lie in [0, 1], got [{tensor.min():.3g}, {tensor.max():.3g}]")
    return tensor.clamp(0, 1).contiguous()


def _colour_mask(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3 or 4) in [0, 1] -> (H, W): the alpha channel when the RGB is constant and alpha varies,
    else the luminance of the RGB."""
    if pixels.shape[-1] == 4 and np.ptp(pixels[..., :3]) < 1e-6 and np.ptp(pixels[..., 3]) > 0:
        return np.ascontiguousarray(pixels[..., 3], dtype=np.float32)
    return _luminance(pixels[..., :3])


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, H, W) soft masks to `size` by area averaging (bilinear when enlarging)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    shrinking = size[0] <= masks.shape[-2] and size[1] <= masks.shape[-1]
    mode = "area" if shrinking else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(masks[:, None].float(), size=size, mode=mode, **kwargs)[:, 0].clamp(0, 1)


def default_names(count: int) -> list[str]:
    return [f"asset{i}" for i in range(count)]


def split_list(text: str | None) -> list[str] | None:
    """'cat, bowl,,stone' -> ['cat', 'bowl', '', 'stone'] (None or blank -> None): how the CLI and the nodes
    take comma-separated names, initializers and tokens."""
    if text is None or not text.strip():
        return None
    return [part.strip() for part in text.split(",")]


def is_empty_mask(mask: torch.Tensor) -> bool:
    """True for a mask with nothing painted (every value at or below 1/1000)."""
    return float(mask.max()) <= EMPTY_MASK_LEVEL


def load_scene(image: Any, masks: Sequence[Any] | torch.Tensor, names: Sequence[str] | None = None,
               initializers: Sequence[str | None] | None = None, *, image_label: str = "image",
               mask_labels: Sequence[str] | None = None) -> Scene:
    """Build a validated Scene; masks of another size are resized to the image.

    The one scene validation of the engine, the CLI and the nodes. Errors are InputErrors whose ``field`` is
    "image", "masks" (``item``: the mask's index), "names" or "initializers"; their messages name the image and
    the masks by ``image_label`` / ``mask_labels`` (file names, node inputs), default "image" and "mask i".
    """
    image_t = image_to_tensor(image, image_label)
    if masks is None or len(masks) == 0:
        raise InputError("masks: a scene needs at least one mask (one per concept), got none", field="masks")
    labels = list(mask_labels) if mask_labels is not None else [f"mask {i}" for i in range(len(masks))]
    height, width = image_t.shape[-2:]
    mask_list = []
    for i, (mask, label) in enumerate(zip(masks, labels)):
        m = mask_to_tensor(mask, label, i)
        m = resize_masks(m[None], (height, width))[0]
        if is_empty_mask(m):
            raise InputError(f"{label}: the mask is empty (all zero); paint the concept's region white",
                             field="masks", item=i)
        mask_list.append(m)
    count = len(mask_list)
    names = list(names) if names is not None else default_names(count)
    if len(names) != count:
        raise InputError(f"names: got {len(names)} concept names for {count} masks; give one name per mask",
                         field="names")
    for name in names:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InputError(f"names: concept name {name!r} must be letters, digits, '_' or '-' only",
                             field="names")
    if len(set(names)) != len(names):
        raise InputError(f"names: concept names must be distinct, got {names}", field="names")
    initializers = list(initializers) if initializers is not None else [None] * count
    if len(initializers) != count:
        raise InputError(f"initializers: got {len(initializers)} initializer words for {count} masks; "
                         "give one per mask (an empty entry means none)", field="initializers")
    initializers = [(w.strip() or None) if isinstance(w, str) else None for w in initializers]
    return Scene(image_t, torch.stack(mask_list), names, initializers)


def load_scene_dir(path: str | os.PathLike, names: Sequence[str] | None = None,
                   initializers: Sequence[str | None] | None = None) -> Scene:
    """Load a folder holding `img.*` and `mask0.png`, `mask1.png`, … (the official examples' layout)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InputError(f"scene folder {path!r} does not exist or is not a folder", field="scene")
    images = [p for p in sorted(glob.glob(os.path.join(path, "img.*"))) if p.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise InputError(f"scene folder {path!r} has no image named img.jpg / img.png", field="image")
    mask_files = {}
    for p in glob.glob(os.path.join(path, "mask*.*")):
        match = re.fullmatch(r"mask(\d+)\.\w+", os.path.basename(p))
        if match and p.lower().endswith(IMAGE_EXTENSIONS):
            mask_files[int(match.group(1))] = p
    if not mask_files:
        raise InputError(f"scene folder {path!r} has no masks named mask0.png, mask1.png, …", field="masks")
    expected = list(range(len(mask_files)))
    if sorted(mask_files) != expected:
        raise InputError(f"scene folder {path!r}: mask numbers must run 0..{len(mask_files) - 1} "
                         f"without gaps, found {sorted(mask_files)}", field="masks")
    files = [mask_files[i] for i in expected]
    # Errors name the files (mask1.png), as the user sees them in the folder.
    return load_scene(images[0], files, names, initializers, image_label=os.path.basename(images[0]),
                      mask_labels=[os.path.basename(f) for f in files])
