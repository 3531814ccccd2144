"""A small LoRA: low-rank adapters on the attention projections, kept beside the frozen base Linear."""
from __future__ import annotations

import math
import re

import torch
from torch import nn

#: attention projections of the diffusers UNet (self- and cross-attention)
UNET_TARGETS = re.compile(r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
#: attention projections of the transformers CLIP text encoder
TEXT_ENCODER_TARGETS = re.compile(r".*\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * up(down(x)); `up` starts at zero so training starts at the base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base, self.rank, self.alpha = base, rank, float(alpha)
        self.down = nn.Parameter(torch.empty(rank, base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.to(base.weight.device)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x.to(self.down.dtype) @ self.down.t() @ self.up.t()).to(x.dtype) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return (self.up @ self.down) * self.scale


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def inject_lora(model: nn.Module, targets: re.Pattern, rank: int, alpha: float,
                generator: torch.Generator | None = None) -> dict[str, LoRALinear]:
    """Wrap every nn.Linear whose path matches `targets`; returns {path: LoRALinear} in path order."""
    if rank < 1:
        raise ValueError(f"lora_rank must be at least 1, got {rank}")
    paths = [p for p, m in model.named_modules() if isinstance(m, nn.Linear) and targets.match(p)]
    if not paths:
        raise ValueError("no attention projection matched the LoRA targets")
    adapters = {}
    for path in sorted(paths):
        adapters[path] = LoRALinear(model.get_submodule(path), rank, alpha, generator)
        _set_module(model, path, adapters[path])
    return adapters


def remove_lora(model: nn.Module, adapters: dict[str, LoRALinear]) -> None:
    """Put the original Linear modules back (the base weights were never changed)."""
    for path, adapter in adapters.items():
        _set_module(model, path, adapter.base)


def lora_state_dict(adapters: dict[str, LoRALinear], prefix: str) -> dict[str, torch.Tensor]:
    """Pack-format keys: '<prefix>.<path>.lora_down' (r, in), '.lora_up' (out, r), '.alpha' (scalar)."""
    state = {}
    for path, adapter in adapters.items():
        state[f"{prefix}.{path}.lora_down"] = adapter.down.detach().float().cpu().contiguous()
        state[f"{prefix}.{path}.lora_up"] = adapter.up.detach().float().cpu().contiguous()
        state[f"{prefix}.{path}.alpha"] = torch.tensor(adapter.alpha)
    return state


def lora_deltas(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """{module path: (alpha / rank) * up @ down} for every adapter under `prefix` in a pack-format dict."""
    deltas = {}
    for key in state:
        if key.startswith(prefix + ".") and key.endswith(".lora_down"):
            path = key[len(prefix) + 1:-len(".lora_down")]
            down, up = state[key].float(), state[f"{prefix}.{path}.lora_up"].float()
            alpha = float(state[f"{prefix}.{path}.alpha"])
            deltas[path] = (up @ down) * (alpha / down.shape[0])
    return deltas
