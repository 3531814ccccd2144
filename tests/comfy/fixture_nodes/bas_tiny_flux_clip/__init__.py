"""A test-only ComfyUI node: DualCLIPLoader (type flux) for the small text encoders of tests/comfy/flux_models.py.

Stock DualCLIPLoader always builds ComfyUI's full T5-XXL (4.7B parameters; ``FluxClipModel`` reads no T5 config
from the weights), which a CPU test cannot run. This node calls the same ``comfy.sd.load_clip`` with the small
configs in ``model_options`` — the one difference — and is linked into the test server's custom_nodes only
(tests/comfy/test_flux_server.py swaps it in for the workflow's DualCLIPLoader). It never ships with the pack.
"""
import os
import sys

import folder_paths

import comfy.sd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
from flux_models import text_options  # noqa: E402  (tests/comfy/flux_models.py)


class BASTestTinyFluxCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        names = folder_paths.get_filename_list("text_encoders")
        return {"required": {"clip_name1": (names,), "clip_name2": (names,)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "testing"

    def load_clip(self, clip_name1, clip_name2):
        paths = [folder_paths.get_full_path_or_raise("text_encoders", name) for name in (clip_name1, clip_name2)]
        clip = comfy.sd.load_clip(ckpt_paths=paths, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                                  clip_type=comfy.sd.CLIPType.FLUX, model_options=text_options())
        return (clip,)


NODE_CLASS_MAPPINGS = {"BASTestTinyFluxCLIPLoader": BASTestTinyFluxCLIPLoader}
