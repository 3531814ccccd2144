"""ConceptPackLoader and ConceptPackExport: concept-pack files in models/break_a_scene."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from .common import CATEGORY, PACK_FOLDER, UserError, check_name, first_folder, user_error
from .types import Concepts, ConceptsType


def load_concepts(pack_name: str) -> Concepts:
    import folder_paths

    from ..bas_engine.errors import BASError
    from ..bas_engine.pack import load_pack

    path = folder_paths.get_full_path(PACK_FOLDER, pack_name) if pack_name else None
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(PACK_FOLDER))
        raise UserError(f"pack_name: no concept pack {pack_name!r} in {folders}")
    try:
        pack = load_pack(path)
    except BASError as exc:
        raise user_error("pack_name", exc) from exc
    name = os.path.splitext(os.path.basename(pack_name))[0]
    return Concepts(pack, name, path)


class ConceptPackLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="ConceptPackLoader",
            display_name="Load Concept Pack",
            category=CATEGORY,
            description="Loads a concept pack saved by the Break-A-Scene Trainer (models/break_a_scene).",
            inputs=[
                io.Combo.Input("pack_name", options=folder_paths.get_filename_list(PACK_FOLDER),
                               tooltip="A concept pack (.safetensors) in models/break_a_scene or a break_a_scene "
                                       "folder of extra_model_paths.yaml."),
            ],
            outputs=[ConceptsType.Output(display_name="concepts", tooltip="The pack's handles and weights.")],
        )

    @classmethod
    def fingerprint_inputs(cls, pack_name: str):
        """Reload when the file changes (a retrained pack under the same name)."""
        import folder_paths

        path = folder_paths.get_full_path(PACK_FOLDER, pack_name) if pack_name else None
        if path is None:
            return f"missing:{pack_name}"
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, pack_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_concepts(pack_name))


def _same_file(path: str, tensors: dict[str, torch.Tensor]) -> bool:
    """True when the safetensors file at `path` holds exactly these tensors (metadata is not compared)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            if keys != set(tensors):
                return False
            for key in keys:
                value, ours = f.get_tensor(key), tensors[key].detach().cpu()
                if value.dtype != ours.dtype or value.shape != ours.shape or not torch.equal(value, ours):
                    return False
    except Exception:       # unreadable / not safetensors: certainly not the same file
        return False
    return True


class ConceptPackExport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConceptPackExport",
            display_name="Export Concept Pack",
            category=CATEGORY,
            description="Writes the pack as standard files: a kohya LoRA in the first 'loras' folder (LoRA packs) "
                        "and one embedding per handle in the first 'embeddings' folder, for LoraLoader and "
                        "'embedding:<name>_<concept>' in any prompt. Never overwrites a different file.",
            inputs=[
                ConceptsType.Input("concepts", tooltip="The concept pack to export."),
                io.String.Input("name", default="",
                                tooltip="File name of the LoRA (<name>.safetensors) and prefix of the embeddings "
                                        "(<name>_<concept>); empty = the pack's name."),
            ],
            outputs=[
                io.String.Output(display_name="lora_name",
                                 tooltip="The LoRA file name for LoraLoader (empty for a full-mode pack)."),
                io.String.Output(display_name="embedding_names",
                                 tooltip="The handles as prompt words: 'embedding:<name>_<concept>', comma-separated, "
                                         "in handle order."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, concepts, name: str = "") -> io.NodeOutput:
        from ..bas_engine.errors import BASError
        from ..bas_engine.pack import embedding_file_stem, export_embeddings, export_kohya_lora, write_exports

        if not isinstance(concepts, Concepts):
            raise UserError(f"concepts: expected BAS_CONCEPTS, got {type(concepts).__name__}")
        pack = concepts.pack
        name = check_name(name, "name") if (name or "").strip() else concepts.name
        embeddings_dir = first_folder("embeddings")
        targets: dict[str, dict[str, torch.Tensor]] = {}
        lora_name, lora_path = "", None
        try:
            if pack.mode == "lora":
                lora_name = name + ".safetensors"
                lora_path = os.path.join(first_folder("loras"), lora_name)
                targets[lora_path] = export_kohya_lora(pack)
            stems = []
            for concept, state in export_embeddings(pack).items():
                stem = embedding_file_stem(name, concept)
                stems.append(stem)
                targets[os.path.join(embeddings_dir, stem + ".safetensors")] = state
        except BASError as exc:
            raise user_error("concepts", exc) from exc
        for path, tensors in targets.items():
            if os.path.exists(path) and not _same_file(path, tensors):
                raise UserError(f"name: {path} already exists and holds other weights; choose another name "
                                "(or delete the old file)")
        try:
            write_exports(pack, name, lora_path, embeddings_dir)
        except BASError as exc:
            raise user_error("concepts", exc) from exc
        embedding_names = ", ".join(f"embedding:{stem}" for stem in stems)
        lines = [f"LoRA: {lora_name}" if lora_name else "full-mode pack: no LoRA file (use the Handle Injector)",
                 f"embeddings: {embedding_names}"]
        return io.NodeOutput(lora_name, embedding_names, ui={"bas_summary": lines})
