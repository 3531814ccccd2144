"""The node pack inside a real, headless ComfyUI server, driven over HTTP (/prompt, /history, /interrupt) and the
websocket, the way the UI drives it.  Needs a ComfyUI checkout with its venv (COMFYUI_PATH); see
docs/COMFYUI_TESTS.md:

    COMFYUI_PATH=/work/shared/comfyui /work/comfyui-venv/bin/python -m pytest -q tests/comfy/test_server.py

One server per module (random-weight SD-shaped fixture checkpoints, a random-weight ControlNet, the creature
scene from ../shared/scenes copied into its input folder).  Every example workflow is converted from the UI
format to the API format, shrunk to tiny settings (64 px, 2 + 2 training steps, LoRA rank 4, 2 sampling steps)
and run to completion; then interruption mid-training and bad inputs.  Takes a few minutes on two CPU cores.
Set BAS_KEEP_COMFY_DIR=1 to keep the server's base directory (log, outputs) after the run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.parse

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as h  # noqa: E402

sys.path.insert(0, os.path.join(h.REPO, "scripts"))
import make_workflows  # noqa: E402

WORKFLOWS = sorted(make_workflows.WORKFLOWS)
BAS_NODES = ["MaskedConceptLoader", "BreakASceneTrainer", "ConceptPackLoader", "HandleInjector",
             "ConceptPromptEncoder", "ConceptPackExport"]
SD15 = "bas_fixture_sd15.safetensors"
SD20V = "bas_fixture_sd20v.safetensors"
CONTROLNET = "bas_fixture_controlnet_sd15.safetensors"
PACK = make_workflows.PACK                      # "creature": the pack name the example workflows use
TINY_TRAIN = dict(phase1_steps=2, phase2_steps=2, resolution=64, lora_rank=4)
CONTROL_REFERENCE = "control_reference.jpg"
LIVE_EVENT = "break_a_scene.training"           # nodes/live.py
CONCEPTS = ["figurine", "bowl", "stone"]         # the creature scene's concept names in the example workflows
OBJECT_INFO: dict = {}                          # the server's /object_info, filled when the server starts

#: The server runs with glibc's malloc told to serve every block of 64 KiB or more by mmap and to trim freed
#: heap memory (SERVER_ENV): freed tensors then go back to the OS and RSS follows live memory.  Without it glibc
#: keeps freed training memory in its arenas and RSS after a run wanders by ~0.9 GB between runs whether or not
#: they were interrupted (measured: 2.67 / 3.55 / 2.75 / 3.56 GB after train / train / interrupt / train).  With
#: it RSS after train / train / interrupt / train / interrupt / train was 2297 / 2307 / 2243 / 2311 / 2267 / 2316
#: MiB.  The tolerance covers that wander (small blocks below the threshold, Python and torch caches, ComfyUI's
#: output cache); a leaked training copy (fp32 diffusers UNet + text encoder + VAE of the fixture, ~1 GB above
#: the level before, see the peak) or its optimiser state would be far above it.
SERVER_ENV = h.SERVER_ENV
RSS_TOLERANCE = 200 * 2**20


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def server():
    checkpoints = {SD15: h.fixture_checkpoint("sd15"), SD20V: h.fixture_checkpoint("sd20v")}
    controlnets = {CONTROLNET: h.fixture_controlnet()}
    srv = h.ComfyServer(COMFYUI_PATH, checkpoints=checkpoints, controlnets=controlnets,
                        env=SERVER_ENV)
    try:
        h.copy_scene_inputs(srv.input_dir, "creature")
        h.write_edit_target(srv.input_dir, "creature", mask_index=1, size=64, name="edit_target.png")
        shutil.copyfile(os.path.join(h.SCENES, "creature", "img.jpg"), os.path.join(srv.input_dir, CONTROL_REFERENCE))
        srv.start()
        OBJECT_INFO.clear()
        OBJECT_INFO.update(srv.object_info)
        yield srv
    finally:
        srv.stop()
        if os.environ.get("BAS_KEEP_COMFY_DIR"):
            print(f"\nComfyUI base directory kept: {srv.base} (log: {srv.log_path})")
        else:
            srv.cleanup()


def tiny(name_or_api, *, ckpt: str = SD15, pack: str = PACK, seed: int = 0) -> dict:
    """The example workflow converted to the API format and shrunk: fixture models, 64 px, 2 + 2 training
    steps, LoRA rank 4, 2 sampling steps."""
    api = name_or_api if isinstance(name_or_api, dict) else h.ui_to_api(h.load_workflow(name_or_api), OBJECT_INFO)
    h.patch_inputs(api, "CheckpointLoaderSimple", ckpt_name=ckpt)
    h.patch_inputs(api, "ControlNetLoader", control_net_name=CONTROLNET)
    h.patch_inputs(api, "BreakASceneTrainer", **TINY_TRAIN)
    h.patch_inputs(api, "ConceptPackLoader", pack_name=f"{pack}.safetensors")
    h.patch_inputs(api, "EmptyLatentImage", width=64, height=64, batch_size=1)
    h.patch_inputs(api, "KSampler", steps=2, seed=seed)
    return api


@pytest.fixture(scope="module")
def object_info(server):
    return server.object_info


def assert_success(server, result, what: str) -> list[str]:
    assert result.status == "success", f"{what}: {result.describe()}\n{server.log_tail()}"
    files = server.output_files(result)
    assert files, f"{what}: no saved image in the outputs {json.dumps(result.entry.get('outputs'))[:500]}"
    for path in files:
        assert os.path.isfile(path) and os.path.getsize(path) > 0, f"{what}: {path} was not written"
    return files


@pytest.fixture(scope="module")
def trained(server, object_info):
    """extract_and_generate at tiny settings: trains the 'creature' pack on the SD1.5 fixture (saved to
    models/break_a_scene), exports it, generates.  Followed on the websocket."""
    api = tiny("extract_and_generate")
    t0 = time.time()
    result, events, binaries = server.run_ws(api, timeout=1200)
    files = assert_success(server, result, "extract_and_generate")
    trainer_id = next(k for k, n in api.items() if n["class_type"] == "BreakASceneTrainer")
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == trainer_id]
    return dict(api=api, result=result, files=files, progress=progress, binaries=binaries,
                seconds=time.time() - t0, trainer_id=trainer_id, live=live_events(events, trainer_id))


def live_events(events: list[dict], trainer_id: str) -> list[dict]:
    """The trainer's live-view messages (nodes/live.py) among a prompt's websocket messages."""
    return [e["data"] for e in events if e["type"] == LIVE_EVENT and e["data"].get("node") == trainer_id]


def decode_data_url(url: str, kind: str):
    import base64
    import io

    from PIL import Image

    prefix = f"data:image/{kind};base64,"
    assert url.startswith(prefix), url[:40]
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))


def wait_for_gc(server, seconds: float = 12.0) -> None:
    """ComfyUI's prompt worker runs gc.collect() at most every 10 s after a prompt: wait past that."""
    time.sleep(seconds)


# ------------------------------------------------------------------------------------------------ static

def test_pack_loads_and_example_workflows_are_served(server):
    missing = [n for n in BAS_NODES if n not in server.object_info]
    assert not missing, f"nodes missing from /object_info: {missing}\n{server.log_tail()}"
    templates = server.get("/workflow_templates")
    assert sorted(templates.get(h.PACK_FOLDER, [])) == WORKFLOWS, templates
    for name in WORKFLOWS:
        status, served = server.request("GET", f"/api/workflow_templates/{h.PACK_FOLDER}/{name}.json")
        assert status == 200 and served == h.load_workflow(name), name


def test_generator_is_in_sync_with_example_workflows():
    assert make_workflows.main(["--check"]) == 0, "example_workflows/ is stale: run scripts/make_workflows.py"


def test_node_table_matches_object_info(object_info):
    """scripts/make_workflows.py's NODE_SPECS (input order, widget vs socket, outputs) is what the server has."""
    for node_type, (inputs, outputs) in make_workflows.NODE_SPECS.items():
        info = object_info.get(node_type)
        assert info is not None, f"{node_type} is not in /object_info"
        have = [(name, "COMBO" if isinstance(spec[0], list) else spec[0], not required)
                for name, spec, required in h.ordered_inputs(info)]
        assert have == list(inputs), f"{node_type}: /object_info inputs {have}\n table {inputs}"
        assert list(info["output"]) == [t for _n, t in outputs], f"{node_type}: outputs {info['output']}"
        for name, spec, _req in h.ordered_inputs(info):
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            assert h.is_widget(spec) == (kind in make_workflows.WIDGET_TYPES), f"{node_type}.{name}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_converts_and_validates(object_info, name):
    workflow = h.load_workflow(name)
    assert workflow["version"] == 0.4
    assert not h.ui_schema_problems(workflow), h.ui_schema_problems(workflow)
    assert workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    assert notes and all(n["widgets_values"][0].strip() for n in notes), "each workflow explains itself in a Note"
    api = h.ui_to_api(workflow, object_info)
    assert len(api) == len(workflow["nodes"]) - len(notes)
    assert not h.api_problems(api, object_info), h.api_problems(api, object_info)
    # widget values land on the right names (the seed's "control after generate" value is skipped)
    sampling = make_workflows.FLUX_SAMPLER if name.startswith("flux") else make_workflows.SAMPLER
    for sampler in h.nodes_of(api, "KSampler"):
        assert sampler["inputs"]["seed"] == 42
        assert {k: sampler["inputs"][k] for k in sampling} == sampling
    for encoder in h.nodes_of(api, "ConceptPromptEncoder"):
        assert encoder["inputs"]["guidance"] == make_workflows.GUIDANCE
    for trainer in h.nodes_of(api, "BreakASceneTrainer"):
        expected = make_workflows.trainer_inputs(name)
        assert {k: trainer["inputs"][k] for k in expected} == expected
    for mask in h.nodes_of(api, "LoadImageMask"):
        assert mask["inputs"]["channel"] == "red"
    # link types agree with the node table (the frontend draws them with these types)
    for link in workflow["links"]:
        target = next(n for n in workflow["nodes"] if n["id"] == link[3])
        assert target["inputs"][link[4]]["type"] == link[5]


def test_converter_handles_frontend_variants(object_info):
    """Old-style seed control value (true), dict links, a Reroute and a muted node."""
    ui = {"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "widgets_values": [64, 64, 1]},
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}]},
        {"id": 3, "type": "KSampler", "mode": 0, "widgets_values": [5, True, 3, 7.0, "euler", "normal", 0.5],
         "inputs": [{"name": "latent_image", "type": "LATENT", "link": 2}]},
        {"id": 4, "type": "PreviewImage", "mode": 2, "inputs": [], "widgets_values": []},
        {"id": 5, "type": "MarkdownNote", "mode": 0, "widgets_values": ["hi"]}],
        "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "LATENT"},
                  [2, 2, 0, 3, 3, "LATENT"]]}
    api = h.ui_to_api(ui, object_info)
    assert set(api) == {"1", "3"}
    assert api["3"]["inputs"] == {"seed": 5, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                  "denoise": 0.5, "latent_image": ["1", 0]}
    problems = h.api_problems(api, object_info)
    assert any("'model'" in p for p in problems) and any("'positive'" in p for p in problems)
    with pytest.raises(h.ConversionError, match="unknown node type"):
        h.ui_to_api({"nodes": [{"id": 1, "type": "NoSuchNode", "inputs": []}], "links": []}, object_info)


# ------------------------------------------------------------------------------------------------ workflows

def test_extract_and_generate(server, trained):
    assert os.path.isfile(os.path.join(server.packs_dir, f"{PACK}.safetensors")), os.listdir(server.packs_dir)
    assert trained["progress"], "the trainer sent no progress events over the websocket"
    assert trained["progress"][-1]["value"] == trained["progress"][-1]["max"]
    assert os.path.isfile(server.path("models", "loras", f"{PACK}.safetensors")), os.listdir(server.path("models", "loras"))
    for concept in ("figurine", "bowl", "stone"):
        assert os.path.isfile(server.path("models", "embeddings", f"{PACK}_{concept}.safetensors")), \
            os.listdir(server.path("models", "embeddings"))


def test_live_view_events(trained):
    """The trainer's live view: progress (history growing to every step), maps of each handle, done; one run id;
    each message small."""
    live = trained["live"]
    kinds = [m["kind"] for m in live]
    assert kinds and kinds[-1] == "done", kinds
    assert len({m["run"] for m in live}) == 1
    progress = [m for m in live if m["kind"] == "progress"]
    total = TINY_TRAIN["phase1_steps"] + TINY_TRAIN["phase2_steps"]
    assert progress[0]["done"] == 1 and progress[-1]["done"] == total == progress[-1]["total"]
    assert [m["done"] for m in progress] == sorted({m["done"] for m in progress})
    for m in progress:
        assert m["phase"] in (1, 2) and 1 <= m["step"] <= m["steps"]
        assert m["rate"] > 0 and m["eta"] >= 0
        history = m["history"]
        assert history["steps"] == list(range(1, m["done"] + 1))      # the chart gains a point per step
        assert all(isinstance(v, float) and v > 0 for v in history["diffusion"] + history["total"])
        assert len(history["attention"]) == m["done"]
    assert progress[-1]["eta"] == 0
    concepts = progress[0]["concepts"]
    assert [c["token"] for c in concepts] == ["<asset0>", "<asset1>", "<asset2>"]
    assert [c["name"] for c in concepts] == CONCEPTS
    assert len({c["color"] for c in concepts}) == 3 and all(len(c["color"]) == 7 for c in concepts)
    maps = [m for m in live if m["kind"] == "maps"]
    assert maps, kinds
    for m in maps:
        assert len(m["maps"]) == 3 and len(m["chosen"]) == 3
        for url in m["maps"]:
            picture = decode_data_url(url, "png")
            assert picture.mode == "L" and max(picture.size) <= 64
        assert max(decode_data_url(m["image"], "jpeg").size) <= 192
    done = live[-1]
    assert done["cached"] is False and "phase2_loss" in done["losses"]
    assert done["history"]["steps"] == list(range(1, total + 1)) and len(done["maps"]) == 3
    assert max(len(json.dumps(m)) for m in live) < 64 * 1024, "live-view messages must stay small"


def test_reuse_saved_pack(server, trained):
    result = server.run(tiny("reuse_saved_pack"))
    assert_success(server, result, "reuse_saved_pack")


def test_live_view_on_cache_hit(server, trained):
    """The same workflow again loads the saved pack: the view gets a new run with the stored losses and maps."""
    api = tiny("extract_and_generate", seed=1)
    result, events, _ = server.run_ws(api, timeout=600)
    assert_success(server, result, "extract_and_generate again (cache hit)")
    live = live_events(events, trained["trainer_id"])
    assert [m["kind"] for m in live] == ["done"], [m["kind"] for m in live]
    done, first = live[0], trained["live"][-1]
    assert done["cached"] is True and done["run"] != first["run"]
    assert done["losses"] == first["losses"] and done["history"] == first["history"]
    assert done["maps"] == first["maps"] and [c["name"] for c in done["concepts"]] == CONCEPTS


def test_pack_route(server, trained):
    """GET /break_a_scene/packs/<name>: the pack's handles for the prompt encoder's chips; names outside the
    packs folder are refused."""
    for route in (f"/break_a_scene/packs/{PACK}", f"/api/break_a_scene/packs/{PACK}.safetensors"):
        status, body = server.request("GET", route)
        assert status == 200, (route, body)
        assert body["name"] == PACK and body["mode"] == "lora" and body["family"] == "sd1"
        assert [c["token"] for c in body["concepts"]] == ["<asset0>", "<asset1>", "<asset2>"]
        assert [c["name"] for c in body["concepts"]] == CONCEPTS
    assert f"{PACK}.safetensors" in server.get("/break_a_scene/packs")["packs"]
    # a file outside the packs folder that a path would reach
    shutil.copyfile(os.path.join(server.packs_dir, f"{PACK}.safetensors"), server.path("models", "outside.safetensors"))
    refused = {"..%2Foutside": 400, "..%2Foutside.safetensors": 400, "..%2F..%2Fmodels%2Foutside": 400,
               "%2Fetc%2Fpasswd": 400, urllib.parse.quote(server.path("models", "outside"), safe=""): 400,
               "..": 400, "outside": 404, "missing.safetensors": 404, "creature.json": 400}
    for name, expected in refused.items():
        status, body = server.request("GET", f"/break_a_scene/packs/{name}")
        assert status in (expected, 404), (name, status, body)      # aiohttp may refuse some paths itself
        assert "concepts" not in (body if isinstance(body, dict) else {}), (name, body)
    status, _ = server.request("GET", "/break_a_scene/packs/../../models/outside")
    assert status == 404


def test_controlnet(server, trained):
    log_start = len(server.log_text())
    api = tiny("controlnet")
    files = assert_success(server, server.run(api), "controlnet")
    log = server.log_text()[log_start:]
    for bad in ("missing controlnet keys", "leftover keys", "could not detect control model",
                "does not contain controlnet"):
        assert bad not in log, f"ControlNetLoader: {bad}\n{log[-3000:]}"
    # the ControlNet acts: strength 0 (ControlNetApplyAdvanced passes the conditioning through) differs
    h.patch_inputs(api, "ControlNetApplyAdvanced", strength=0.0)
    h.patch_inputs(api, "SaveImage", filename_prefix="break_a_scene/controlnet_off")
    files_off = assert_success(server, server.run(api), "controlnet strength 0")
    import numpy as np
    from PIL import Image

    with_cn = np.asarray(Image.open(files[0]), dtype=np.int16)
    without = np.asarray(Image.open(files_off[0]), dtype=np.int16)
    assert with_cn.shape == without.shape and np.abs(with_cn - without).max() > 0


def test_local_edit(server, trained):
    import numpy as np
    from PIL import Image

    files = assert_success(server, server.run(tiny("local_edit")), "local_edit")
    target = np.asarray(Image.open(os.path.join(server.input_dir, "edit_target.png")))
    edited = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.int16)
    assert edited.shape[:2] == target.shape[:2]
    region = target[..., 3] == 0
    grown = np.zeros_like(region)
    r = 10                                              # GrowMask expands by 8 px (tapered): stay clear of it
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            grown |= np.roll(np.roll(region, dy, 0), dx, 1)
    outside = ~grown
    assert outside.sum() > 100 and region.sum() > 20
    diff = np.abs(edited - target[..., :3].astype(np.int16))
    assert diff[outside].max() <= 1, "pixels outside the painted region changed"
    assert diff[region].max() > 8, "the painted region was not edited"


def test_stock_nodes_only(server, trained):
    log_start = len(server.log_text())
    files = assert_success(server, server.run(tiny("stock_nodes_only")), "stock_nodes_only")
    log = server.log_text()[log_start:]
    assert "lora key not loaded" not in log, log[-3000:]
    assert "does not exist, ignoring" not in log, log[-3000:]        # embedding:<pack>_<concept> not found
    assert files


# ------------------------------------------------------------------------------------------------ interrupt

def test_interrupt_mid_training(server, trained):
    packs_before = sorted(os.listdir(server.packs_dir))
    wait_for_gc(server)
    rss_before = server.rss()
    api = tiny("extract_and_generate")
    # interrupted in phase 2 of a full fine-tune: the fp32 deltas, their gradients and Adam's state on the model
    # trained in place are what must show while training and be gone after (phase 1 alone holds a few rows)
    h.patch_inputs(api, "BreakASceneTrainer", pack_name="interrupted", phase1_steps=2, phase2_steps=300,
                   mode="full")
    trainer_id = next(k for k, n in api.items() if n["class_type"] == "BreakASceneTrainer")
    state = {"interrupted_at": None, "peak": rss_before}

    def on_event(kind, data):
        state["peak"] = max(state["peak"], server.rss())
        if kind == "progress" and data.get("node") == trainer_id and data["value"] >= 5 \
                and state["interrupted_at"] is None:
            state["interrupted_at"] = (data["value"], data["max"])
            assert server.interrupt() == 200

    result, events, _ = server.run_ws(api, timeout=1200, on_event=on_event)
    kinds = [e["type"] for e in events]
    assert state["interrupted_at"] is not None, f"no trainer progress seen: {kinds}\n{server.log_tail()}"
    assert state["interrupted_at"][0] < state["interrupted_at"][1]
    assert "execution_interrupted" in [e for e, _ in result.messages], result.describe()
    assert result.error is None, result.describe()
    assert sorted(os.listdir(server.packs_dir)) == packs_before, "a file was left in models/break_a_scene"
    assert server.healthy()
    wait_for_gc(server)
    rss_after = server.rss()
    grown = rss_after - rss_before
    print(f"\nRSS before {rss_before / 2**20:.0f} MiB, peak while training {state['peak'] / 2**20:.0f} MiB, "
          f"after interrupt {rss_after / 2**20:.0f} MiB (interrupted at step {state['interrupted_at']})")
    assert state["peak"] - rss_before > 2 * RSS_TOLERANCE, "training did not show in RSS: the check would be blind"
    assert grown < RSS_TOLERANCE, (f"server RSS grew by {grown / 2**20:.0f} MiB after an interrupted training "
                                   f"(peak {state['peak'] / 2**20:.0f} MiB, before {rss_before / 2**20:.0f} MiB)")
    # the server keeps working: a following small prompt succeeds
    assert_success(server, server.run(tiny("reuse_saved_pack", seed=1)), "prompt after the interrupt")


# ------------------------------------------------------------------------------------------------ bad inputs

def scene_only(object_info, **loader_inputs) -> dict:
    """LoadImage + LoadImageMask x3 -> Masked Concept Loader -> PreviewImage (the loader's preview)."""
    api = h.ui_to_api(h.load_workflow("extract_and_generate"), object_info)
    loader_id = next(k for k, n in api.items() if n["class_type"] == "MaskedConceptLoader")
    keep = {loader_id} | {v[0] for v in api[loader_id]["inputs"].values() if isinstance(v, list)}
    out = {k: v for k, v in api.items() if k in keep}
    out["900"] = {"class_type": "PreviewImage", "inputs": {"images": [loader_id, 1]}}
    out[loader_id]["inputs"].update(loader_inputs)
    return out


def expect_error(server, api, *needles: str, what: str) -> str:
    result = server.run(api)
    assert result.status in ("error", "rejected"), f"{what}: expected an error, got {result.describe()}"
    text = result.error_text()
    low = text.lower()
    missing = [n for n in needles if n.lower() not in low]
    assert not missing, f"{what}: the error does not name {missing}: {text!r}"
    if result.entry is not None:
        assert result.error is not None, f"{what}: no execution_error message: {result.describe()}"
        assert result.error["exception_type"].split(".")[-1] not in ("KeyError", "IndexError", "AttributeError",
                                                                     "TypeError"), text
    assert server.healthy(), f"server not healthy after: {what}\n{server.log_tail()}"
    print(f"\n{what}: {'execution_error' if result.entry is not None else 'validation (HTTP 400)'}: {text}")
    return text


def test_error_names_and_mask_count_mismatch(server, object_info):
    expect_error(server, scene_only(object_info, concept_names="figurine, bowl"), "2", "3", what="2 names, 3 masks")


def test_error_empty_mask(server, object_info):
    api = scene_only(object_info)
    mask_ids = sorted(k for k, n in api.items() if n["class_type"] == "LoadImageMask")
    api[mask_ids[1]]["inputs"]["channel"] = "alpha"     # these masks are opaque: alpha -> an empty mask
    expect_error(server, api, "empty", what="empty mask")


def test_error_unknown_handle(server, trained):
    api = tiny("reuse_saved_pack")
    h.patch_inputs(api, "ConceptPromptEncoder", text="a photo of <dragon> next to <asset0>")
    expect_error(server, api, "<dragon>", "<asset0>", what="unknown handle")


def test_error_wrong_family(server, trained):
    api = tiny("reuse_saved_pack", ckpt=SD20V)
    expect_error(server, api, "SD1", "SD2", what="SD1 pack on the SD2-v checkpoint")


def test_error_corrupt_pack(server):
    with open(os.path.join(server.packs_dir, "corrupt.safetensors"), "wb") as fh:
        fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + os.urandom(256))
    try:
        expect_error(server, tiny("reuse_saved_pack", pack="corrupt"), "corrupt.safetensors", what="corrupt pack")
    finally:
        os.remove(os.path.join(server.packs_dir, "corrupt.safetensors"))


def test_server_still_serves_after_errors(server, trained):
    assert server.healthy()
    assert_success(server, server.run(tiny("reuse_saved_pack", seed=2)), "prompt after the errors")
