"""Scene input: mask normalisation, resizing, input kinds, scene folders, and errors that name the culprit."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from bas_engine.errors import InputError
from bas_engine.scene import image_to_tensor, load_scene, load_scene_dir, mask_to_tensor, resize_masks

from engine_helpers import SHARED_SCENES, needs_shared_scenes


def _soft_mask(h=32, w=32) -> np.ndarray:
    """Soft values 0, 0.2, 128/255 and 1: multiples of 1/255, so a uint8 round trip keeps them exactly."""
    mask = np.zeros((h, w), dtype=np.float32)
    mask[4:12, 4:28] = 255 / 255
    mask[12:20, 4:28] = 128 / 255
    mask[20:24, 4:28] = 51 / 255
    return mask


def _image(h=32, w=32, seed=0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


# -- mask normalisation --------------------------------------------------------------------------------------
def test_luminance_from_rgb():
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:4, :, 0] = 255                      # red
    rgb[4:, :, 1] = 255                      # green
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[:4] = 0.299
    expected[4:] = 0.587
    for source in (Image.fromarray(rgb, "RGB"), rgb, torch.from_numpy(rgb)):
        mask = mask_to_tensor(source, "mask 0")
        assert mask.shape == (8, 8) and mask.dtype == torch.float32
        torch.testing.assert_close(mask, torch.from_numpy(expected), atol=2e-3, rtol=0)


def test_alpha_when_rgb_constant_and_alpha_varies(tmp_path):
    alpha = (_soft_mask() * 255).round().astype(np.uint8)
    rgba = np.full((32, 32, 4), 255, dtype=np.uint8)
    rgba[..., 3] = alpha
    path = tmp_path / "painted.png"
    Image.fromarray(rgba, "RGBA").save(path)
    expected = torch.from_numpy(alpha.astype(np.float32) / 255)
    # a file, a PIL image, and the same pixels as a numpy / torch array all read the alpha channel
    for source in (path, Image.open(path), rgba, torch.from_numpy(rgba)):
        torch.testing.assert_close(mask_to_tensor(source, "mask 0"), expected, atol=1e-6, rtol=0)


@needs_shared_scenes
def test_shared_scene_masks_are_luminance_with_opaque_alpha():
    path = os.path.join(SHARED_SCENES, "bear", "mask0.png")
    image = Image.open(path)
    assert image.mode == "RGBA"
    rgba = np.asarray(image)
    assert (rgba[..., 3] == 255).all()
    mask = mask_to_tensor(path, "mask 0")
    expected = (rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114) / 255
    torch.testing.assert_close(mask, torch.from_numpy(expected.astype(np.float32)), atol=1e-5, rtol=0)
    assert 0 < float(mask.mean()) < 1 and float(mask.max()) > 0.99


def test_soft_values_kept():
    soft = _soft_mask()
    for source in (soft, (soft * 255).round().astype(np.uint8), Image.fromarray((soft * 255).round().astype(np.uint8))):
        values = np.unique(mask_to_tensor(source, "mask 0").numpy())
        np.testing.assert_allclose(values, [0, 51 / 255, 128 / 255, 1], atol=1e-6)
    values = np.unique(load_scene(_image(), [soft]).masks.numpy())
    np.testing.assert_allclose(values, [0, 51 / 255, 128 / 255, 1], atol=1e-6)


def test_masks_resized_to_the_image():
    image = _image(64, 48)
    small = np.zeros((16, 12), dtype=np.float32)
    small[4:12, 3:9] = 1
    large = np.zeros((128, 96), dtype=np.float32)
    large[32:96, 24:72] = 1
    scene = load_scene(image, [small, large])
    assert scene.masks.shape == (2, 64, 48)
    for mask in scene.masks:                     # same region, whatever size it came in
        assert float(mask[18:46, 18:34].min()) > 0.99      # inside the (bilinear-softened) edge
        assert float(mask[:12].max()) < 0.01 and float(mask[:, :8].max()) < 0.01
    # shrinking averages areas (soft edges keep their mean), enlarging stays in [0, 1]
    torch.testing.assert_close(resize_masks(torch.from_numpy(large)[None], (64, 48))[0].mean(),
                               torch.from_numpy(large).mean())
    up = resize_masks(torch.from_numpy(small)[None], (64, 48))
    assert up.shape == (1, 64, 48) and float(up.min()) >= 0 and float(up.max()) <= 1


def test_input_kinds_agree(tmp_path):
    soft = _soft_mask()
    as_uint8 = (soft * 255).round().astype(np.uint8)
    path = tmp_path / "mask0.png"
    Image.fromarray(as_uint8, "L").save(path)
    expected = torch.from_numpy(as_uint8.astype(np.float32) / 255)
    sources = [as_uint8, as_uint8.astype(np.float32) / 255, torch.from_numpy(as_uint8),
               torch.from_numpy(as_uint8.astype(np.float32) / 255)[None],   # (1, H, W), as ComfyUI's MASK
               Image.fromarray(as_uint8, "L"), str(path), pathlib.Path(path)]
    for source in sources:
        torch.testing.assert_close(mask_to_tensor(source, "mask 0"), expected, atol=1e-6, rtol=0)
    assert torch.equal(mask_to_tensor(soft > 0.5, "mask 0"), torch.from_numpy((soft > 0.5).astype(np.float32)))

    pixels = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    image_path = tmp_path / "img.png"
    Image.fromarray(pixels).save(image_path)
    expected_image = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)
    for source in (pixels, pixels.astype(np.float32) / 255, torch.from_numpy(pixels).permute(2, 0, 1),
                   torch.from_numpy(pixels)[None], Image.fromarray(pixels), str(image_path), image_path):
        torch.testing.assert_close(image_to_tensor(source), expected_image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("count", [1, 3, 8])
def test_any_number_of_concepts(count):
    masks = [np.zeros((32, 32), dtype=np.float32) for _ in range(count)]
    for i, mask in enumerate(masks):
        mask[i * 4:(i + 1) * 4, :] = 1
    scene = load_scene(_image(), masks, initializers=["bear"] + [""] * (count - 1))
    assert scene.num_concepts == count and scene.masks.shape == (count, 32, 32)
    assert scene.names == [f"asset{i}" for i in range(count)]
    assert scene.initializers == ["bear"] + [None] * (count - 1)
    for i in range(count):
        assert float(scene.masks[i, i * 4:(i + 1) * 4].min()) == 1.0


@needs_shared_scenes
@pytest.mark.parametrize("name", ["bear", "sheep"])
def test_load_scene_dir_on_shared_scene(name):
    folder = os.path.join(SHARED_SCENES, name)
    count = len([f for f in os.listdir(folder) if f.startswith("mask")])
    scene = load_scene_dir(folder)
    assert scene.image.shape == (3, 512, 512)
    assert scene.masks.shape == (count, 512, 512)
    assert scene.names == [f"asset{i}" for i in range(count)]
    for i in range(count):
        assert 0 < float(scene.masks[i].mean()) < 0.9 and float(scene.masks[i].max()) > 0.99
    assert scene.fingerprint() == load_scene_dir(folder).fingerprint()


# -- errors name the culprit ---------------------------------------------------------------------------------
def _write_masks(folder, numbers, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)).save(folder / "img.png")
    for n in numbers:
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[2:10, 2:10] = 255
        Image.fromarray(mask, "L").save(folder / f"mask{n}.png")


def test_error_no_masks(tmp_path):
    with pytest.raises(InputError, match="masks: .*at least one mask"):
        load_scene(_image(), [])
    folder = tmp_path / "nomasks"
    _write_masks(folder, [])
    with pytest.raises(InputError, match="no masks named mask0.png") as info:
        load_scene_dir(folder)
    assert str(folder) in str(info.value)


def test_error_empty_mask():
    good = _soft_mask()
    with pytest.raises(InputError, match=r"mask 1: the mask is empty"):
        load_scene(_image(), [good, np.zeros((32, 32), dtype=np.float32), good])


def test_error_folder_names_the_file(tmp_path):
    folder = tmp_path / "scene"
    _write_masks(folder, [0, 1])
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(folder / "mask1.png")
    with pytest.raises(InputError, match=r"^mask1\.png: the mask is empty") as info:
        load_scene_dir(folder)
    assert (info.value.field, info.value.item) == ("masks", 1)
    _write_masks(folder, [1])
    with pytest.raises(InputError, match=r"^names: got 1 concept names for 2 masks") as info:
        load_scene_dir(folder, names=["cat"])
    assert info.value.field == "names"


def test_error_count_mismatch():
    masks = [_soft_mask(), _soft_mask()]
    with pytest.raises(InputError, match=r"names: got 3 concept names for 2 masks"):
        load_scene(_image(), masks, names=["a", "b", "c"])
    with pytest.raises(InputError, match=r"initializers: got 1 initializer words for 2 masks"):
        load_scene(_image(), masks, initializers=["bear"])
    with pytest.raises(InputError, match=r"names: concept name 'a b'"):
        load_scene(_image(), masks, names=["a b", "c"])
    with pytest.raises(InputError, match=r"names: concept names must be distinct"):
        load_scene(_image(), masks, names=["a", "a"])


def test_error_unreadable_file(tmp_path):
    folder = tmp_path / "bad"
    _write_masks(folder, [0, 1])
    (folder / "mask1.png").write_bytes(b"this is not a png")
    # A folder's masks are named by their files, as the user sees them; the error carries the input as data.
    with pytest.raises(InputError, match=r"^mask1\.png: file .*mask1\.png.* is not a readable image") as info:
        load_scene_dir(folder)
    assert (info.value.field, info.value.item) == ("masks", 1)
    with pytest.raises(InputError, match=r"image: file .*missing\.png.* does not exist"):
        load_scene(tmp_path / "missing.png", [_soft_mask()])
    truncated = folder / "mask0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(InputError, match=r"mask 0: file .*mask0\.png"):
        load_scene(_image(16, 16), [truncated])


def test_error_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match="does not exist or is not a folder") as info:
        load_scene_dir(missing)
    assert str(missing) in str(info.value)


def test_error_mask_numbering_gap(tmp_path):
    folder = tmp_path / "gap"
    _write_masks(folder, [0, 2])
    with pytest.raises(InputError, match=r"mask numbers must run 0\.\.1 without gaps, found \[0, 2\]"):
        load_scene_dir(folder)
    _write_masks(folder, [1])                      # now 0, 1, 2: loads
    assert load_scene_dir(folder).num_concepts == 3


def test_error_bad_values_and_shapes():
    with pytest.raises(InputError, match=r"mask 0: mask values must lie in \[0, 1\]"):
        load_scene(_image(), [_soft_mask() * 255])
    with pytest.raises(InputError, match=r"mask 0: expected a single-channel mask"):
        load_scene(_image(), [np.zeros((2, 5, 32, 32), dtype=np.float32)])
    with pytest.raises(InputError, match=r"image: float pixel values must lie in \[0, 1\]"):
        load_scene(_image() * 3, [_soft_mask()])
