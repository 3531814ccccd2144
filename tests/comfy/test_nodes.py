"""The node pack inside a real ComfyUI (in-process, no model weights): loading and registration, schemas,
the model folder, the Masked Concept Loader and the errors that need no model.

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_nodes.py
"""
from __future__ import annotations

import os
import re
import subprocess
import shutil
from types import SimpleNamespace

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_IDS = ["MaskedConceptLoader", "BreakASceneTrainer", "ConceptPackLoader", "HandleInjector",
            "ConceptPromptEncoder", "ConceptPackExport"]

# The node spec (docs/NODES.md): node id -> input names in widget order.
SPEC_INPUTS = {
    "MaskedConceptLoader": ["image", "concept_names", "initializers", "masks"] + [f"mask_{i}" for i in range(8)],
    "BreakASceneTrainer": ["model", "clip", "vae", "scene", "pack_name", "phase1_steps", "phase2_steps", "phase1_lr",
                    "phase2_lr", "mode", "lora_rank", "train_text_encoder", "attention_loss_weight", "masked_loss",
                    "union_sampling", "resolution", "seed", "retrain"],
    "ConceptPackLoader": ["pack_name"],
    "HandleInjector": ["model", "clip", "concepts", "strength_model", "strength_clip"],
    "ConceptPromptEncoder": ["clip", "concepts", "text", "guidance"],
    "ConceptPackExport": ["concepts", "name"],
}
SPEC_OUTPUTS = {
    "MaskedConceptLoader": ["BAS_SCENE", "IMAGE"], "BreakASceneTrainer": ["BAS_CONCEPTS", "IMAGE"],
    "ConceptPackLoader": ["BAS_CONCEPTS"], "HandleInjector": ["MODEL", "CLIP"],
    "ConceptPromptEncoder": ["CONDITIONING"], "ConceptPackExport": ["STRING", "STRING"],
}


# -- loading and schemas -----------------------------------------------------------------------------------------

def test_comfy_loader_registers_all_nodes(bas):
    mapping = bas.comfy_nodes.NODE_CLASS_MAPPINGS
    assert all(node_id in mapping for node_id in NODE_IDS)
    assert os.path.samefile(bas.comfy_nodes.EXTENSION_WEB_DIRS[os.path.basename(REPO)], os.path.join(REPO, "web"))
    names = bas.comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert names["BreakASceneTrainer"] == "Break-A-Scene Trainer"
    assert names["MaskedConceptLoader"] == "Masked Concept Loader"


#: Frozen: a node id is what saved workflows refer to, so once released it never changes (display names may).
FROZEN_NODE_IDS = {
    "MaskedConceptLoader": "Masked Concept Loader",
    "BreakASceneTrainer": "Break-A-Scene Trainer",
    "ConceptPackLoader": "Load Concept Pack",
    "HandleInjector": "Handle Injector",
    "ConceptPromptEncoder": "Concept Prompt Encoder",
    "ConceptPackExport": "Export Concept Pack",
}


def test_node_ids_are_frozen(bas):
    """Every node the pack registers has one of the frozen ids, and every frozen id is registered."""
    import sys

    node_list = sys.modules[f"{bas.package}.nodes"].NODE_LIST
    registered = {cls.GET_SCHEMA().node_id: cls.GET_SCHEMA().display_name for cls in node_list}
    assert set(registered) == set(FROZEN_NODE_IDS), "a node id changed: saved workflows would no longer load"
    assert registered == FROZEN_NODE_IDS
    for node_id in FROZEN_NODE_IDS:
        assert bas.comfy_nodes.NODE_CLASS_MAPPINGS[node_id] is bas.classes[node_id]


def test_package_import_is_light(bas):
    """Loading the pack does not import the engine (diffusers); the root module has no V1 mappings."""
    import sys

    root = sys.modules[bas.package]
    assert not hasattr(root, "NODE_CLASS_MAPPINGS")
    assert root.WEB_DIRECTORY == "./web"
    assert f"{bas.package}.nodes.training" in sys.modules
    assert bas.engine_at_load == [], "the engine (diffusers) must be imported lazily, when a node runs"


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_schema_matches_spec(bas, node_id):
    cls = bas.classes[node_id]
    schema = cls.GET_SCHEMA()
    assert schema.category == "Break-A-Scene"
    assert schema.description and len(schema.description) > 20
    assert [i.id for i in schema.inputs] == SPEC_INPUTS[node_id]
    for item in schema.inputs:
        assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
    assert [str(o.io_type) for o in schema.outputs] == SPEC_OUTPUTS[node_id]
    info = cls.GET_NODE_INFO_V1()          # what /object_info serves
    assert info["category"] == "Break-A-Scene"
    assert schema.is_output_node == (node_id == "ConceptPackExport")


def test_trainer_defaults_match_spec(bas):
    inputs = {i.id: i for i in bas.classes["BreakASceneTrainer"].GET_SCHEMA().inputs}
    expected = dict(pack_name="scene", phase1_steps=400, phase2_steps=400, phase1_lr=5e-4, phase2_lr=0.0, mode="lora",
                    lora_rank=16, train_text_encoder=False, attention_loss_weight=0.01, masked_loss=True,
                    union_sampling=True, resolution=512, seed=0, retrain=False)
    assert {k: inputs[k].default for k in expected} == expected
    assert inputs["mode"].options == ["lora", "full"]


def test_web_extension_is_valid_javascript():
    path = os.path.join(REPO, "web", "break_a_scene.js")
    text = open(path, encoding="utf-8").read()
    assert "registerExtension" in text
    for node_id in NODE_IDS:
        assert node_id in text
    node = shutil.which("node")
    if node:
        result = subprocess.run([node, "--check", path], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# -- model folder ----------------------------------------------------------------------------------------------

def test_model_folder_registered(bas, comfy_dirs):
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["break_a_scene"]
    assert paths[0] == str(comfy_dirs.break_a_scene)
    assert extensions == {".safetensors"}
    assert bas.module("nodes.common").packs_dir() == str(comfy_dirs.break_a_scene)


def test_extra_model_paths_are_kept(bas, comfy_dirs, tmp_path):
    """extra_model_paths.yaml is read before custom nodes load: its break_a_scene folders stay (first) and
    only .safetensors files are listed; a yaml read afterwards adds its folder too."""
    import folder_paths
    import utils.extra_config

    common = bas.module("nodes.common")
    saved = folder_paths.folder_names_and_paths["break_a_scene"]
    extra, later = tmp_path / "shared" / "packs", tmp_path / "later" / "packs"
    extra.mkdir(parents=True)
    later.mkdir(parents=True)
    (extra / "a.safetensors").write_bytes(b"x")
    (extra / "notes.txt").write_text("x")
    (later / "b.safetensors").write_bytes(b"x")
    first = tmp_path / "extra.yaml"
    first.write_text(f"shared:\n    base_path: {tmp_path / 'shared'}\n    break_a_scene: packs\n")
    second = tmp_path / "later.yaml"
    second.write_text(f"later:\n    break_a_scene: {later}\n")
    try:
        del folder_paths.folder_names_and_paths["break_a_scene"]
        utils.extra_config.load_extra_path_config(str(first))        # ComfyUI start-up, before custom nodes
        common.register_model_folder()                                # the pack's __init__
        paths, extensions = folder_paths.folder_names_and_paths["break_a_scene"]
        assert paths == [str(extra), os.path.join(folder_paths.models_dir, "break_a_scene")]
        assert extensions == {".safetensors"}
        assert common.packs_dir() == str(extra)
        utils.extra_config.load_extra_path_config(str(second))
        assert folder_paths.get_folder_paths("break_a_scene")[-1] == str(later)
        # the default folder may hold packs other tests saved; from the yaml folders only the .safetensors files
        default = os.path.join(folder_paths.models_dir, "break_a_scene")
        saved_elsewhere = set(os.listdir(default)) if os.path.isdir(default) else set()
        listed = [name for name in folder_paths.get_filename_list("break_a_scene") if name not in saved_elsewhere]
        assert listed == ["a.safetensors", "b.safetensors"]
    finally:
        folder_paths.folder_names_and_paths["break_a_scene"] = saved
        folder_paths.filename_list_cache.pop("break_a_scene", None)


# -- Masked Concept Loader ---------------------------------------------------------------------------------------

def _image(h=64, w=64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, h, w, 3, generator=g)


def _box(h, w, x0, x1, y0=None, y1=None):
    m = torch.zeros(h, w)
    m[(y0 or h // 4):(y1 or 3 * h // 4), x0:x1] = 1.0
    return m


def test_scene_from_batch(bas, run_node):
    masks = torch.stack([_box(64, 64, 0, 32), _box(64, 64, 32, 64)])
    with torch.inference_mode():
        image, masks = _image().clone(), masks.clone()     # ComfyUI hands inference tensors to nodes
    out = run_node(bas.classes["MaskedConceptLoader"], image=image, concept_names="cat, bowl",
                   initializers="", masks=masks)
    scene, preview = out.args
    assert scene.names == ["cat", "bowl"] and scene.initializers == [None, None]
    assert scene.image.shape == (3, 64, 64) and scene.masks.shape == (2, 64, 64)
    assert not scene.image.is_inference() and not scene.masks.is_inference()
    assert preview.shape == (1, 64, 64, 3) and preview.dtype == torch.float32
    assert out.ui["bas_summary"] == ["2 concepts: <asset0> cat, <asset1> bowl"]
    torch.testing.assert_close(scene.image, image[0].permute(2, 0, 1))


def test_scene_from_separate_masks_resized(bas, run_node):
    """Batch first, then mask_0..mask_7 in order; masks of another size are resized to the image."""
    batch = _box(64, 96, 0, 30)[None]
    small = _box(32, 48, 16, 32)                   # half size
    out = run_node(bas.classes["MaskedConceptLoader"], image=_image(64, 96), concept_names="",
                   initializers="cat,,stone", masks=batch, mask_2=small[None], mask_0=_box(64, 96, 60, 90)[None])
    scene = out.args[0]
    assert scene.names == ["asset0", "asset1", "asset2"]
    assert scene.initializers == ["cat", None, "stone"]
    assert scene.masks.shape == (3, 64, 96)
    torch.testing.assert_close(scene.masks[0], batch[0])
    torch.testing.assert_close(scene.masks[1], _box(64, 96, 60, 90))          # mask_0 comes second
    assert float(scene.masks[2, 32, 40]) == pytest.approx(1.0) and float(scene.masks[2, 32, 10]) == 0.0


@pytest.mark.parametrize("case, inputs, pattern", [
    ("no masks", {}, r"^masks: connect one mask per concept"),
    ("empty mask", {"mask_0": torch.zeros(1, 64, 64)}, r"^mask_0: the mask is empty.*LoadImage's MASK output.*1 - alpha"),
    ("empty in batch", {"masks": torch.stack([_box(64, 64, 0, 9), torch.zeros(64, 64)])}, r"^masks\[1\]: the mask is empty"),
    ("names count", {"masks": _box(64, 64, 0, 9)[None], "concept_names": "cat, dog"}, r"^concept_names: got 2 concept names for 1 masks"),
    ("bad name", {"masks": _box(64, 64, 0, 9)[None], "concept_names": "a cat"}, r"^concept_names: concept name 'a cat'"),
    ("initializers count", {"masks": _box(64, 64, 0, 9)[None], "initializers": "a,b"}, r"^initializers: got 2 initializer words for 1 masks"),
    ("separate batch", {"mask_3": torch.stack([_box(64, 64, 0, 9)] * 2)}, r"^mask_3: got a batch of 2 masks"),
    ("image batch", {"masks": _box(64, 64, 0, 9)[None], "image": torch.rand(2, 64, 64, 3)}, r"^image: got a batch of 2"),
])
def test_scene_errors(bas, case, inputs, pattern, run_node):
    inputs = {"image": _image(), "concept_names": "", "initializers": "", **inputs}
    with pytest.raises(ValueError, match=pattern):
        run_node(bas.classes["MaskedConceptLoader"], **inputs)


# -- errors that need no model -----------------------------------------------------------------------------------

def _fake_model(config_name: str):
    config = type(config_name, (), {"unet_config": {}})()
    return SimpleNamespace(model=SimpleNamespace(model_config=config), patches={})


@pytest.mark.parametrize("family", ["SD3", "FluxInpaint", "SD21UnclipL", "SD15_instructpix2pix", "SDXLRefiner"])
def test_trainer_names_unsupported_family(bas, family, run_node):
    """Every family the table does not hold is named, with the supported ones and ComfyUI's names for them."""
    with pytest.raises(ValueError, match=rf"^model: this is a {family} model; Break-A-Scene supports SD1\.x \(SD15\), "
                                         rf"SD2\.x \(SD20\), SDXL \(SDXL/SSD1B/Segmind_Vega/.*\) and Flux\.1 "
                                         rf"\(Flux/FluxSchnell\) checkpoints only$"):
        run_node(bas.classes["BreakASceneTrainer"], model=_fake_model(family), clip=None, vae=None, scene=None,
                 pack_name="x", phase1_steps=1, phase2_steps=1)


def test_loader_corrupt_and_foreign_files(bas, comfy_dirs, run_node):
    from safetensors.torch import save_file

    (comfy_dirs.break_a_scene / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(comfy_dirs.break_a_scene / "a_lora.safetensors"))
    loader = bas.classes["ConceptPackLoader"]
    try:
        with pytest.raises(ValueError, match=r"^pack_name: concept pack .*corrupt\.safetensors.* truncated or not a "
                                             r"safetensors file"):
            run_node(loader, pack_name="corrupt.safetensors")
        with pytest.raises(ValueError, match=r"^pack_name: .*not a Break-A-Scene concept pack"):
            run_node(loader, pack_name="a_lora.safetensors")
        with pytest.raises(ValueError, match=r"^pack_name: no concept pack 'missing.safetensors'"):
            run_node(loader, pack_name="missing.safetensors")
        assert "corrupt.safetensors" in loader.GET_SCHEMA().inputs[0].options
    finally:
        os.remove(comfy_dirs.break_a_scene / "corrupt.safetensors")
        os.remove(comfy_dirs.break_a_scene / "a_lora.safetensors")


def test_pack_name_validation(bas):
    check = bas.module("nodes.common").check_name
    assert check(" my-pack_2 ", "pack_name") == "my-pack_2"
    for bad in ("", "a b", "../x", "x.safetensors", "é"):
        with pytest.raises(ValueError, match=r"^pack_name: .*letters, digits"):
            check(bad, "pack_name")


def test_prompt_rewrite_keeps_weights(bas):
    """<handle> becomes ' embedding:<pack>_<concept> ' (also inside ComfyUI's (...:1.2) weights)."""
    engine_pack = __import__(f"{bas.package}.bas_engine.pack", fromlist=["ConceptPack"])
    pack = engine_pack.ConceptPack(["<asset0>", "<asset1>"], ["cat", "bowl"], [None, None],
                                   {"clip_l": torch.zeros(2, 768)}, "full", meta={"family": "sd1"})
    concepts = bas.module("nodes.types").Concepts(pack, "scene")
    rewrite = bas.module("nodes.prompt").rewrite_prompt
    assert rewrite("a photo of <asset0>", concepts) == "a photo of  embedding:scene_cat "
    assert rewrite("(<bowl>:1.2), <cat>'s", concepts) == "( embedding:scene_bowl :1.2),  embedding:scene_cat 's"
    with pytest.raises(ValueError, match=r"^text: unknown handle '<dog>'; this pack knows <asset0> \(cat\), "
                                         r"<asset1> \(bowl\)"):
        rewrite("a <dog>", concepts)
    import comfy.sd1_clip

    parsed = comfy.sd1_clip.token_weights(rewrite("a photo of (<asset0>:1.2)", concepts), 1.0)
    assert (" embedding:scene_cat ", 1.2) in parsed
    assert re.search(r"embedding:scene_cat", rewrite("<asset0>", concepts))


# -- the pack-metadata route (nodes/routes.py) ------------------------------------------------------------------

def test_pack_route_refuses_names_outside_the_packs_folder(bas, comfy_dirs):
    """Only names the break_a_scene folders list are answered; a request string never becomes a path."""
    summary = bas.module("nodes.routes").pack_summary
    outside = comfy_dirs.models / "outside.safetensors"
    outside.write_bytes(b"not read")
    for name in ("../outside", "../outside.safetensors", "..%2Foutside", str(outside), str(outside)[:-12], "..",
                 "", "sub/outside", "outside.json", "outside\x00.safetensors"):
        status, body = summary(name)
        assert status == 400 and "error" in body, (name, status, body)
    for name in ("outside", "outside.safetensors", "missing"):
        status, body = summary(name)
        assert status == 404 and "no concept pack" in body["error"], (name, status, body)


# -- the trainer's live view (nodes/live.py) -------------------------------------------------------------------

def test_live_view_messages_are_rate_limited_small_and_complete(bas):
    """Progress at most every PROGRESS_INTERVAL s (plus the first and last step), the history downsampled to
    HISTORY_POINTS with every step counted, NaN (no attention loss) as null, maps unflipped, a done snapshot."""
    import json

    live = bas.module("nodes.live")
    import importlib

    callbacks = importlib.import_module(".bas_engine.callbacks", package=bas.package)
    sent, now = [], [0.0]
    view = live.LiveView("7", ["<asset0>", "<asset1>"], ["cat", "bowl"], send=lambda name, data: sent.append((name, data)),
                         clock=lambda: now[0])
    total = 1000
    for done in range(1, total + 1):
        now[0] += 0.01                                  # 100 steps/s: 50 steps between two messages
        phase, step = (1, done) if done <= 500 else (2, done - 500)
        view.on_progress(callbacks.ProgressEvent(phase, step, 500, done, total,
                                                 {"diffusion": 0.5, "loss": 0.5 + 1e-3 * done}))
    assert {name for name, _ in sent} == {live.EVENT}
    progress = [data for _, data in sent]
    assert progress[0]["done"] == 1 and progress[-1]["done"] == total and progress[-1]["eta"] == 0
    assert 18 <= len(progress) <= 22, len(progress)                 # 10 s of training, one message per 0.5 s
    assert abs(progress[-1]["rate"] - 100) < 1
    last = progress[-1]["history"]
    assert len(last["steps"]) == live.HISTORY_POINTS and last["steps"][-1] == total
    assert last["attention"] == [None] * live.HISTORY_POINTS       # no attention loss this run
    assert abs(last["total"][-1] - (0.5 + 1e-3 * (total - 1.5))) < 1e-3    # bucket means
    assert max(len(json.dumps(data)) for data in progress) < 32 * 1024
    assert [c["name"] for c in progress[0]["concepts"]] == ["cat", "bowl"]

    image = torch.zeros(3, 32, 48)
    image[0, :, :24] = 1.0                             # red on the left of the flipped picture
    maps = torch.zeros(2, 8, 12)
    maps[0, :, :6] = 1.0                               # handle 0 attends to the left of the flipped picture
    view.on_preview(callbacks.PreviewEvent(2, 500, total, total, image, maps, [True, False], ["<asset0>", "<asset1>"],
                                           flipped=True))
    kind = sent[-1][1]
    assert kind["kind"] == "maps" and kind["chosen"] == [True, False] and len(kind["maps"]) == 2
    import base64
    import io

    from PIL import Image

    heat = Image.open(io.BytesIO(base64.b64decode(kind["maps"][0].split(",", 1)[1])))
    assert heat.size == (12, 8) and heat.getpixel((11, 4)) == 255 and heat.getpixel((0, 4)) == 0, "maps unflipped"
    view.finish({"phase2_loss": 1.0})
    done = sent[-1][1]
    assert done["kind"] == "done" and done["cached"] is False and done["maps"] == kind["maps"]
    assert done["history"] == last and done["losses"] == {"phase2_loss": 1.0}
    assert len({data["run"] for _, data in sent}) == 1
    assert view.snapshot()["history"] == last
