"""The pack's own socket types: a scene (image + masks) and a loaded concept pack."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

#: a bas_engine.scene.Scene (image, masks, concept names, initializer words)
Scene = io.Custom("BAS_SCENE")
#: a Concepts value (below): a concept pack and its name
ConceptsType = io.Custom("BAS_CONCEPTS")


@dataclass(frozen=True)
class Concepts:
    """What flows through a BAS_CONCEPTS socket.

    ``pack`` is a ``bas_engine.pack.ConceptPack``; ``name`` is the pack's file stem (``scene`` for
    ``models/break_a_scene/scene.safetensors``): the in-memory handle embeddings are called
    ``<name>_<concept>`` (``bas_engine.pack.embedding_file_stem``), like the files ConceptPackExport writes.
    """

    pack: Any
    name: str
    path: str | None = None

    @property
    def family(self) -> str:
        return self.pack.family

    def stems(self) -> list[str]:
        """Embedding names of the handles, in token order (``embedding:<stem>`` in a prompt)."""
        from ..bas_engine.pack import embedding_file_stem

        return [embedding_file_stem(self.name, concept) for concept in self.pack.names]

    def describe(self) -> str:
        return ", ".join(f"{t} ({n})" for t, n in zip(self.pack.tokens, self.pack.names))
