"""ComfyUI nodes of the Break-A-Scene pack (V3 schema). The engine (bas_engine) is imported lazily."""
from __future__ import annotations

from .inject import HandleInjector
from .packs import ConceptPackExport, ConceptPackLoader
from .prompt import ConceptPromptEncoder
from .scene import MaskedConceptLoader
from .training import Trainer

NODE_LIST = [MaskedConceptLoader, Trainer, ConceptPackLoader, HandleInjector, ConceptPromptEncoder,
             ConceptPackExport]

__all__ = ["NODE_LIST"]
