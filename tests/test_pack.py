"""The concept pack file: round trip, atomic writes, load errors, compatibility and handle names."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bas_engine.errors import PackError
from bas_engine.pack import (FORMAT_NAME, FORMAT_VERSION, ConceptPack, check_compatible, load_pack, save_pack)


@pytest.fixture
def pack(trained) -> ConceptPack:
    return trained[0]


def _rewrite_metadata(source, target, **changes):
    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata.update(changes)
    save_file(tensors, str(target), metadata={k: v for k, v in metadata.items() if v is not None})


def test_round_trip(pack, tmp_path):
    path = tmp_path / "scene.bas.safetensors"
    save_pack(pack, path)
    loaded = load_pack(path)
    assert (loaded.tokens, loaded.names, loaded.initializers, loaded.mode) == (
        pack.tokens, pack.names, pack.initializers, pack.mode)
    for field in ("handles", "lora", "deltas"):
        ours, theirs = getattr(pack, field), getattr(loaded, field)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert theirs[key].dtype == ours[key].dtype and torch.equal(theirs[key], ours[key]), key
    assert pack.lora and any(k.startswith("text_encoder.") for k in pack.lora)
    assert loaded.meta == json.loads(json.dumps(pack.meta))
    assert loaded.meta["settings"]["lora_rank"] == 4 and loaded.family == pack.family == "sd1"
    # a full-mode pack (deltas, no LoRA) round-trips as well
    full = ConceptPack(pack.tokens, pack.names, [None, "bear", None], pack.handles, "full",
                       deltas={"unet.conv_in.weight": torch.randn(32, 4, 3, 3)}, meta={"family": "sd1"})
    save_pack(full, tmp_path / "full.safetensors")
    again = load_pack(tmp_path / "full.safetensors")
    assert again.mode == "full" and again.initializers == [None, "bear", None] and again.lora == {}
    assert torch.equal(again.deltas["unet.conv_in.weight"], full.deltas["unet.conv_in.weight"])


def test_atomic_save_leaves_no_temporary_files(pack, tmp_path):
    path = tmp_path / "out" / "pack.safetensors"
    save_pack(pack, path)
    save_pack(pack, path)                                  # overwriting too
    assert os.listdir(tmp_path / "out") == ["pack.safetensors"]
    # a write that fails inside safetensors (two entries sharing memory) leaves no temporary or partial file
    shared = torch.zeros(4, 4)
    broken = ConceptPack(pack.tokens, pack.names, pack.initializers, pack.handles, "lora",
                         {"unet.a.lora_down": shared, "unet.b.lora_down": shared})
    with pytest.raises(Exception, match="share memory"):
        save_pack(broken, tmp_path / "out" / "broken.safetensors")
    assert os.listdir(tmp_path / "out") == ["pack.safetensors"]
    assert load_pack(path).tokens == pack.tokens


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(PackError, match="does not exist") as info:
        load_pack(missing)
    assert str(missing) in str(info.value)


def test_load_truncated_file(pack, tmp_path):
    path = tmp_path / "pack.safetensors"
    save_pack(pack, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(PackError, match="truncated or not a safetensors file"):
        load_pack(path)
    path.write_bytes(b"")
    with pytest.raises(PackError, match="truncated or not a safetensors file"):
        load_pack(path)


def test_load_plain_safetensors_is_not_a_pack(tmp_path):
    path = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(PackError, match="not a Break-A-Scene concept pack"):
        load_pack(path)


def test_load_other_format_version(pack, tmp_path):
    good = tmp_path / "pack.safetensors"
    save_pack(pack, good)
    with safe_open(str(good), framework="pt") as f:
        assert f.metadata()["format"] == FORMAT_NAME and f.metadata()["format_version"] == str(FORMAT_VERSION)
    newer = tmp_path / "newer.safetensors"
    _rewrite_metadata(good, newer, format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(PackError, match=f"format version {FORMAT_VERSION + 1}; this version reads version "
                                        f"{FORMAT_VERSION}"):
        load_pack(newer)
    damaged = tmp_path / "damaged.safetensors"
    _rewrite_metadata(good, damaged, bas="{not json")
    with pytest.raises(PackError, match="damaged metadata"):
        load_pack(damaged)
    assert load_pack(good).tokens == pack.tokens            # the intact file still loads


def test_check_compatible(pack):
    assert check_compatible(pack, "sd1", pack.meta["fingerprint"]) == []
    with pytest.raises(PackError, match="trained on an SD1.x model, but the model given is SD2.x"):
        check_compatible(pack, "sd2")
    warnings = check_compatible(pack, "sd1", "0123456789abcdef")
    assert len(warnings) == 1 and pack.meta["fingerprint"] in warnings[0]
    with pytest.raises(PackError, match="base weights"):
        check_compatible(pack, "sd1", "0123456789abcdef", strict=True)


def test_token_for():
    pack = ConceptPack(["<asset0>", "<asset1>"], ["figurine", "asset1"], [None, None],
                       {"clip_l": torch.zeros(2, 4)}, "full")
    for spelling in ("<asset0>", "asset0", "figurine", "<figurine>", " asset0 "):
        assert pack.token_for(spelling) == "<asset0>"
    assert pack.token_for("asset1") == "<asset1>"
    with pytest.raises(PackError) as info:
        pack.token_for("<asset7>")
    message = str(info.value)
    assert "'<asset7>'" in message and "<asset0> (figurine)" in message and "<asset1> (asset1)" in message


def test_text_encoder_keys_are_canonical_and_resolve_in_both_transformers_layouts(pack, components):
    from torch import nn

    from bas_engine.components import text_encoder_part

    te_keys = [k for k in pack.lora if k.startswith("text_encoder.")]
    assert te_keys and not any(".text_model." in k for k in te_keys)
    path = te_keys[0][len("text_encoder."):].rsplit(".", 1)[0]
    flat = text_encoder_part(components.text_encoder, path)           # transformers 5: no prefix
    holder = nn.Module()
    holder.text_model = components.text_encoder                        # transformers 4 layout
    assert text_encoder_part(holder, path) is flat


def test_saved_files_follow_the_umask(tmp_path, pack):
    umask = os.umask(0o022)
    try:
        target = tmp_path / "pack.safetensors"
        save_pack(pack, target)
        assert (os.stat(target).st_mode & 0o777) == 0o644
    finally:
        os.umask(umask)
