"""Break-A-Scene engine on diffusers + transformers (never imports ComfyUI)."""
__version__ = "0.1.0"
