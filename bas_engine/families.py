"""The model families the method supports, and how each names its text encoder (no heavy imports)."""

#: cross-attention context width -> model family (the text encoder decides the family)
FAMILY_BY_CONTEXT = {768: "sd1", 1024: "sd2"}
#: family -> text-encoder name, as ComfyUI and the pack format call it
ENCODER_BY_FAMILY = {"sd1": "clip_l", "sd2": "clip_h"}
#: how errors and the UI name the families
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x"}
