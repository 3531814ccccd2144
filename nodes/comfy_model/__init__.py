"""The engine's model adapter for ComfyUI's own MODEL / CLIP / VAE (training in place); see model.py."""
from .model import ComfyModel

__all__ = ["ComfyModel"]
