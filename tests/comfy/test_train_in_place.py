"""The Trainer trains ComfyUI's own loaded model in place (real ComfyUI, in-process): the same method as the engine's
diffusers path (same losses, handles and weights for the same seed), and the MODEL / CLIP that flowed in are
unchanged afterwards, whether training finished, failed or was interrupted (in phase 1, in phase 2, while saving),
with the training memory given back.

    COMFYUI_PATH=/work/shared/comfyui .cache/comfyui-venv/bin/python -m pytest -q tests/comfy/test_train_in_place.py
"""
from __future__ import annotations

import gc
import os
import weakref
from types import SimpleNamespace

import pytest

COMFYUI_PATH = os.environ["COMFYUI_PATH"]      # checked (or defaulted) by conftest.py, which skips otherwise

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402

from helpers import Hook, assert_same_training, both_paths, sample_with_pack, scene_inputs  # noqa: E402

TRAIN = dict(pack_name="inplace", phase1_steps=2, phase2_steps=2, phase1_lr=5e-4, phase2_lr=0.0, mode="lora",
             lora_rank=4, train_text_encoder=False, attention_loss_weight=0.01, masked_loss=True,
             union_sampling=True, resolution=64, seed=0, retrain=True)


def _load(checkpoint_path, name: str):
    """The checkpoint as ComfyUI's Load Checkpoint node loads it: inside inference mode (inference tensors)."""
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint_path(name), output_vae=True,
                                                                    output_clip=True, embedding_directory=None)
    return SimpleNamespace(model=model, clip=clip, vae=vae)


@pytest.fixture(scope="module")
def sd15(checkpoint_path, comfy_dirs):
    loaded = _load(checkpoint_path, "sd15l3")
    yield loaded
    mm.unload_all_models()


@pytest.fixture(scope="module")
def scene(bas, run_node, sd15):
    return run_node(bas.classes["MaskedConceptLoader"], **scene_inputs()).args[0]


# -- the same method on both paths ---------------------------------------------------------------------------------

def test_lora_run_equals_the_engines(bas, sd15):
    engine, engine_losses, comfy, comfy_losses = both_paths(bas, sd15, "sd1", "epsilon", mode="lora")
    assert_same_training(engine, engine_losses, comfy, comfy_losses, weight_atol=1e-5)
    assert {k.split(".")[0] for k in comfy.lora} == {"unet"} and comfy.deltas == {}
    ups = [v for k, v in comfy.lora.items() if k.endswith(".lora_up")]
    assert ups and all(torch.count_nonzero(up) for up in ups), "phase 2 trained every adapter"


def test_full_run_equals_the_engines(bas, sd15):
    """Full fine-tuning as a trainable delta on every weight (weight decay off: on the comfy path it decays the
    change, on the engine's the weight; see docs/COMFY_NOTES.md)."""
    engine, engine_losses, comfy, comfy_losses = both_paths(bas, sd15, "sd1", "epsilon", mode="full",
                                                            weight_decay=0.0)
    # Adam divides by the root of tiny second moments: deltas agree to a few % of one step (lr 2e-6)
    assert_same_training(engine, engine_losses, comfy, comfy_losses, weight_atol=4e-7)
    assert len(comfy.deltas) == len(list(sd15.model.model.diffusion_model.parameters()))


def test_v_prediction_with_the_text_encoder_equals_the_engines(bas, checkpoint_path, comfy_dirs):
    """SD2 768-v: v-prediction through the model's own model_sampling, OpenCLIP-H handles, LoRA on the text
    encoder too (its unused last layer left out, as the engine's converted encoder has none)."""
    sd2 = _load(checkpoint_path, "sd20v")
    try:
        engine, engine_losses, comfy, comfy_losses = both_paths(bas, sd2, "sd2", "v_prediction", mode="lora",
                                                                train_text_encoder=True)
    finally:
        mm.unload_all_models()
        del sd2
        gc.collect()
    assert_same_training(engine, engine_losses, comfy, comfy_losses, weight_atol=1e-5)
    assert {k.split(".")[0] for k in comfy.lora} == {"unet", "text_encoder"}
    assert not any(".layers.23." in k for k in comfy.lora)


# -- the MODEL and CLIP that flowed in stay as they were -----------------------------------------------------------

def _own_layers(patcher):
    return [m for m in patcher.model.modules() if hasattr(m, "weight_function")]


def snapshot(loaded) -> dict:
    model, clip = loaded.model, loaded.clip
    return {
        "state": {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()},
        "clip_state": {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()},
        "patches": (dict(model.patches), dict(clip.patcher.patches), model.patches_uuid, clip.patcher.patches_uuid),
        "options": repr(model.model_options), "object_patches": dict(model.object_patches),
        "wrappers": (dict(model.weight_wrapper_patches), dict(clip.patcher.weight_wrapper_patches)),
        "tokenizer": clip.tokenizer, "layer_idx": clip.layer_idx,
        "manual_cast": model.model.manual_cast_dtype,
        "hooks": [(m, dict(m._forward_pre_hooks)) for m in clip.cond_stage_model.modules() if m._forward_pre_hooks],
    }


def training_clones_loaded(loaded) -> list:
    """ComfyUI's loaded models that are clones of the MODEL or CLIP but not those objects themselves."""
    found = []
    for entry in mm.current_loaded_models:
        patcher = entry.model
        if patcher is None or patcher is loaded.model or patcher is loaded.clip.patcher:
            continue
        if patcher.is_clone(loaded.model) or patcher.is_clone(loaded.clip.patcher):
            found.append(patcher)
    return found


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaN included: ComfyUI leaves weights a checkpoint lacks, e.g. SD1's unused text_projection,
    uninitialised, and what memory held there may read as NaN, which torch.equal never calls equal)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.detach().reshape(-1).contiguous().view(torch.uint8), b.detach().reshape(-1).contiguous().view(torch.uint8))


def assert_unchanged(loaded, before: dict) -> None:
    after = snapshot(loaded)
    for part in ("state", "clip_state"):
        assert after[part].keys() == before[part].keys()
        changed = [k for k, v in before[part].items() if not same_bits(after[part][k], v)]
        assert not changed, f"{part}: {changed[:3]}"
    for key in ("patches", "options", "object_patches", "wrappers", "layer_idx", "manual_cast"):
        assert after[key] == before[key], key
    assert after["tokenizer"] is before["tokenizer"]
    assert not [m for m in loaded.clip.cond_stage_model.modules() if m._forward_pre_hooks], "hooks left on the CLIP"
    for patcher in (loaded.model, loaded.clip.patcher):
        leftovers = [m for m in _own_layers(patcher) if m.weight_function or m.bias_function]
        assert not leftovers, "weight wrappers left on ComfyUI's layers"
        assert not any("forward" in m.__dict__ for m in patcher.model.modules()), "checkpointed forwards left"
    assert not training_clones_loaded(loaded), "a training clone is still among ComfyUI's loaded models"


class Recorder:
    """Weak references to everything a run allocates for training (adapter, handle vectors, phase-2 weights)."""

    def __init__(self, bas, monkeypatch):
        self.refs = []
        model_module = bas.module("nodes.comfy_model.model")
        weights_module = bas.module("nodes.comfy_model.weights")
        original_init, original_params = model_module.ComfyModel.__init__, weights_module.TrainableWeights.parameters
        recorder = self

        def init(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            recorder.refs.append(weakref.ref(self))

        def parameters(self):
            params = original_params(self)
            recorder.refs.extend(weakref.ref(p) for p in params)
            return params

        monkeypatch.setattr(model_module.ComfyModel, "__init__", init)
        monkeypatch.setattr(weights_module.TrainableWeights, "parameters", parameters)
        text_module = bas.module("nodes.comfy_model.text")
        original_vectors = text_module.ComfyText.vectors.fget

        def vectors(self):
            found = original_vectors(self)
            recorder.refs.extend(weakref.ref(v) for v in found)
            return found

        monkeypatch.setattr(text_module.ComfyText, "vectors", property(vectors))

    def assert_released(self) -> None:
        gc.collect()
        assert self.refs, "nothing was recorded"
        alive = [r() for r in self.refs if r() is not None]
        assert not alive, f"{len(alive)} training objects are still alive ({type(alive[0]).__name__})"


@pytest.fixture
def interrupt_at():
    """interrupt_at(step, raises=True): ComfyUI's progress hook that interrupts once ``step`` is reached."""
    def install(step, raises=True):
        hook = Hook(step, raises)
        comfy.utils.set_progress_bar_global_hook(hook)
        return hook
    yield install
    comfy.utils.set_progress_bar_global_hook(None)
    mm.interrupt_current_processing(False)


def _packs(comfy_dirs) -> list[str]:
    return sorted(os.listdir(comfy_dirs.break_a_scene))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_finished_run_leaves_model_and_clip_unchanged(bas, run_node, sd15, scene, comfy_dirs, monkeypatch, mode):
    recorder = Recorder(bas, monkeypatch)
    before = snapshot(sd15)
    out = run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
                   **{**TRAIN, "mode": mode, "train_text_encoder": True, "pack_name": f"done_{mode}"})
    assert (comfy_dirs.break_a_scene / f"done_{mode}.safetensors").is_file()
    assert out.args[0].pack.mode == mode
    assert_unchanged(sd15, before)
    del out
    recorder.assert_released()


@pytest.mark.parametrize("where,raises", [("phase 1", True), ("phase 1", False), ("phase 2", True),
                                          ("phase 2", False), ("saving", True)])
def test_interrupt_leaves_no_pack_and_nothing_attached(bas, run_node, sd15, scene, comfy_dirs, monkeypatch,
                                                        interrupt_at, where, raises):
    """ComfyUI's cancel in phase 1 (after step 1), in phase 2 (after step 3), or while the pack is being written,
    raised by the progress hook or seen as the flag before the next step: InterruptProcessingException, no pack and
    no temporary file, the MODEL and CLIP as they were, every training object released, ComfyUI's flag consumed."""
    recorder = Recorder(bas, monkeypatch)
    before, files = snapshot(sd15), _packs(comfy_dirs)
    hook = interrupt_at({"phase 1": 1, "phase 2": 3, "saving": None}[where], raises)
    if where == "saving":
        fileio = bas.module("bas_engine.fileio")
        real_save = fileio.save_file

        def interrupted_save(tensors, path, metadata=None):
            real_save(dict(list(tensors.items())[:1]), path, metadata=metadata)      # a part is on disk already
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()
        monkeypatch.setattr(fileio, "save_file", interrupted_save)
    with pytest.raises(mm.InterruptProcessingException) as caught:
        run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
                 **{**TRAIN, "pack_name": "cancelled", "train_text_encoder": True})
    assert hook.steps == {"phase 1": [1], "phase 2": [1, 2, 3], "saving": [1, 2, 3, 4]}[where]
    assert not mm.processing_interrupted()
    assert _packs(comfy_dirs) == files, "no pack and no temporary file"
    assert_unchanged(sd15, before)
    assert caught.value.__traceback__ is not None         # released although the exception still holds its frames
    recorder.assert_released()


def test_failed_run_leaves_model_and_clip_unchanged(bas, run_node, sd15, scene, comfy_dirs, monkeypatch):
    """An error inside a step (here: the denoiser raising, as an out-of-memory would) propagates; nothing stays."""
    recorder = Recorder(bas, monkeypatch)
    before, files = snapshot(sd15), _packs(comfy_dirs)
    model_module = bas.module("nodes.comfy_model.model")
    calls = []
    real_predict = model_module.ComfyModel.predict

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated out of memory")
        return real_predict(self, *args)
    monkeypatch.setattr(model_module.ComfyModel, "predict", failing)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
                 **{**TRAIN, "pack_name": "failed"})
    assert _packs(comfy_dirs) == files
    assert_unchanged(sd15, before)
    recorder.assert_released()


def test_other_nodes_sample_as_before(bas, run_node, sd15, scene):
    """After training, ComfyUI's own KSampler on the MODEL that flowed in gives what it gave before training."""
    import nodes as comfy_nodes

    def sample():
        with torch.inference_mode():
            positive = comfy_nodes.CLIPTextEncode().encode(sd15.clip, "a photo of a cat")[0]
            negative = comfy_nodes.CLIPTextEncode().encode(sd15.clip, "")[0]
            latent = {"samples": torch.zeros(1, 4, 8, 8)}
            return comfy_nodes.common_ksampler(sd15.model, 3, 2, 5.0, "euler", "normal", positive, negative,
                                               latent)[0]["samples"]
    before = sample()
    run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
             **{**TRAIN, "pack_name": "then_sample", "train_text_encoder": True})
    assert torch.equal(sample(), before)


def test_training_uses_the_loaded_modules_not_a_copy(bas, run_node, sd15, scene, monkeypatch):
    """During training the denoiser that runs is ComfyUI's own module (that no diffusers model is built at all is
    checked in a process where diffusers cannot be imported: test_no_diffusers.py)."""
    model_module = bas.module("nodes.comfy_model.model")
    seen = []
    real_predict = model_module.ComfyModel.predict

    def predict(self, *args):
        seen.append(self.unet.model.diffusion_model is sd15.model.model.diffusion_model)
        return real_predict(self, *args)
    monkeypatch.setattr(model_module.ComfyModel, "predict", predict)
    run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
             **{**TRAIN, "pack_name": "same_modules"})
    assert seen and all(seen)


def test_auto_computes_in_the_half_precision_comfy_keeps_the_weights_in(bas, sd15, monkeypatch):
    """On CUDA, "auto" takes the dtype ComfyUI keeps the weights in when it is fp16 or bf16 (another dtype would
    cast every layer per step and keep the casts for backward); an explicit setting wins. (A CUDA device object
    only: nothing is allocated.)"""
    ComfyModel = bas.module("nodes.comfy_model").ComfyModel
    cuda = torch.device("cuda")
    with torch.inference_mode(False):
        adapter = ComfyModel(sd15.model, sd15.clip, sd15.vae, "sd1", "epsilon")
    for kept in (torch.float16, torch.bfloat16):
        monkeypatch.setattr(sd15.model.model, "manual_cast_dtype", kept)
        assert adapter.compute_dtype("auto", cuda) == kept
        assert adapter.compute_dtype("bf16", cuda) == torch.bfloat16
        assert adapter.compute_dtype("no", cuda) is None
    assert adapter.compute_dtype("auto", torch.device("cpu")) is None


def test_packs_cross_between_the_paths(bas, run_node, sd15, scene, checkpoint_path, comfy_dirs, tmp_path):
    """A pack the node trained in ComfyUI generates with `bas generate` (the engine, on the same checkpoint file), and
    one `bas extract` trained loads and samples through the ComfyUI nodes: the pack format is one."""
    import numpy as np
    from PIL import Image

    from comfy_fixtures import comfy_tokenizer_dir

    from bas_engine.cli import main

    checkpoint, tokenizer = checkpoint_path("sd15l3"), comfy_tokenizer_dir(COMFYUI_PATH)
    run_node(bas.classes["BreakASceneTrainer"], model=sd15.model, clip=sd15.clip, vae=sd15.vae, scene=scene,
             **{**TRAIN, "pack_name": "cross_node"})
    images = tmp_path / "images"
    assert main(["generate", str(comfy_dirs.break_a_scene / "cross_node.safetensors"), "--model", checkpoint,
                 "--tokenizer", tokenizer, "--prompt", "a photo of <cat> and <asset1>", "--out", str(images),
                 "--steps", "2", "--size", "64", "--device", "cpu"]) == 0
    assert len(list(images.glob("*.png"))) == 1

    scene_dir = tmp_path / "scene"
    scene_dir.mkdir()
    image = (scene.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(image).save(scene_dir / "img.png")
    for i, mask in enumerate(scene.masks):
        Image.fromarray((mask.numpy() * 255).round().astype(np.uint8)).save(scene_dir / f"mask{i}.png")
    engine_pack = comfy_dirs.break_a_scene / "cross_engine.safetensors"
    assert main(["extract", str(scene_dir), "--model", checkpoint, "--tokenizer", tokenizer, "--out", str(engine_pack),
                 "--names", "cat,bowl", "--phase1-steps", "1", "--phase2-steps", "1", "--resolution", "64",
                 "--lora-rank", "4", "--device", "cpu"]) == 0
    concepts = run_node(bas.classes["ConceptPackLoader"], pack_name="cross_engine.safetensors").args[0]
    latent = sample_with_pack(bas, run_node, sd15.model, sd15.clip, concepts, "a photo of <cat> and <asset1>")
    assert torch.isfinite(latent).all()
    assert concepts.pack.meta["fingerprint"] == bas.module("nodes.common").unet_fingerprint(sd15.model)


def test_free_memory_counts_what_comfy_can_offload(bas, sd15, monkeypatch):
    """The memory plan on CUDA: free memory, plus what ComfyUI can offload (loaded models that do not share the
    training clones' weights), minus what the clones still need. (Stand-ins for the loaded-model list and the free
    figure: no GPU is touched.)"""
    ComfyModel = bas.module("nodes.comfy_model").ComfyModel
    cuda = torch.device("cuda")
    with torch.inference_mode(False):
        adapter = ComfyModel(sd15.model, sd15.clip, sd15.vae, "sd1", "epsilon")

    class Unrelated:
        def is_clone(self, other):
            return False

    class Loaded:
        def __init__(self, model, size):
            self.model, self.device, self.size = model, cuda, size

        def model_loaded_memory(self):
            return self.size

    gib = 2 ** 30
    monkeypatch.setattr(mm, "current_loaded_models", [Loaded(Unrelated(), 5 * gib), Loaded(sd15.model, 1 * gib)])
    monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False: 2 * gib)
    for patcher in (adapter.unet, adapter.clip.patcher):    # nothing of the clones on the GPU yet
        monkeypatch.setattr(patcher, "loaded_size", lambda: 0)
    missing = sum(p.model_size() for p in (adapter.unet, adapter.clip.patcher))
    assert missing > 0
    assert adapter._free_bytes_for_training(cuda) == 2 * gib + 5 * gib - missing
    assert adapter._free_bytes_for_training(torch.device("cpu")) is None
