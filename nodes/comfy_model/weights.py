"""Phase 2's trainable weights on ComfyUI's own model: weight wrappers (``ModelPatcher.add_weight_wrapper``).

ComfyUI's layers (``comfy.ops``) run every function in their ``weight_function`` list on the weight they compute
with; a wrapper adds the trained change there: ``W + (alpha / rank) * up @ down`` (LoRA) or ``W + delta`` (full).
The frozen weights are never written and stay in their dtype; the wrappers' parameters are fp32. This is how
ComfyUI's own trainer (``comfy_extras/nodes_train.py``) trains; the LoRA here starts like the engine's
(``bas_engine.lora``: ``down`` Kaiming-uniform from the run's generator, ``up`` zero), so both paths start alike.

Names: packs name UNet weights the diffusers way (``bas_engine.weight_names``) and text-encoder weights without
``text_model.``; ComfyUI's keys are ``diffusion_model.<LDM name>`` and the family table's ``comfy_prefix``.
"""
from __future__ import annotations

import math

import torch
from comfy.weight_adapter.base import WeightAdapterTrainBase

from ...bas_engine.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS
from ...bas_engine.weight_names import ldm_to_diffusers_unet_name


class LoRAWeight(WeightAdapterTrainBase):
    """W -> W + (alpha / rank) * up @ down."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        out_features, in_features = weight.shape[0], weight[0].numel()
        self.rank, self.alpha = rank, float(alpha)
        self.down = torch.nn.Parameter(torch.empty(rank, in_features))
        self.up = torch.nn.Parameter(torch.zeros(out_features, rank))
        torch.nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.to(weight.device)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        delta = (self.up @ self.down) * (self.alpha / self.rank)
        return (w + delta.reshape(w.shape)).to(w.dtype)

    def passive_memory_usage(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


class DeltaWeight(WeightAdapterTrainBase):
    """W -> W + delta (full fine-tuning without touching W)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.delta = torch.nn.Parameter(torch.zeros(weight.shape, dtype=torch.float32, device=weight.device))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return (w + self.delta).to(w.dtype)

    def passive_memory_usage(self) -> int:
        return self.delta.numel() * self.delta.element_size()


def is_ours(function) -> bool:
    return isinstance(function, (LoRAWeight, DeltaWeight))


class TrainableWeights:
    """What phase 2 trains on a MODEL clone (and, with train_text_encoder, a CLIP clone), by pack name."""

    def __init__(self):
        self.lora: dict[str, LoRAWeight] = {}        # pack module name ("unet.<diffusers path>") -> wrapper
        self.deltas: dict[str, DeltaWeight] = {}     # pack weight name ("unet.<diffusers name>") -> wrapper
        self.touched: list[torch.nn.Module] = []     # ComfyUI layers that got a wrapper (to take them off again)

    # -- which layers -----------------------------------------------------------------------------------------------
    @staticmethod
    def unet_layers(model_patcher) -> dict[str, tuple[str, torch.nn.Module]]:
        """{diffusers module path: (ComfyUI key prefix, layer)} of every ComfyUI layer of the UNet."""
        diffusion_model = model_patcher.model.diffusion_model
        per_level = set(diffusion_model.num_res_blocks)
        if len(per_level) != 1:
            raise ValueError(f"the UNet has {sorted(per_level)} ResNets per level; packs need one number")
        layers_per_block = per_level.pop()
        return {ldm_to_diffusers_unet_name(path, layers_per_block): (f"diffusion_model.{path}", module)
                for path, module in diffusion_model.named_modules() if hasattr(module, "weight_function") and path}

    @staticmethod
    def text_layers(clip, spec) -> dict[str, tuple[str, torch.nn.Module]]:
        """{module path without ``text_model.`` (the pack's): (CLIP patcher key prefix, layer)} of one text encoder.

        Left out: the embeddings (the handles live beside the token table), and for a family whose conditioning
        stops before the last transformer layer (the table's ``drop_last_layer``: SD2) that layer, which the
        diffusers model the packs are named after does not have and which no output depends on.
        """
        root = spec.comfy_prefix.removesuffix("text_model.")          # "clip_l.transformer."
        encoder_layers = len(getattr(clip.cond_stage_model, spec.name).transformer.text_model.encoder.layers)
        unused = f"encoder.layers.{encoder_layers - 1}." if spec.drop_last_layer else None
        layers = {}
        for path, module in clip.cond_stage_model.named_modules():
            if path.startswith(root) and hasattr(module, "weight_function") and ".embeddings." not in path:
                name = path[len(root):].removeprefix("text_model.")
                if unused is None or not name.startswith(unused):
                    layers[name] = (path, module)
        return layers

    # -- memory ---------------------------------------------------------------------------------------------------
    @staticmethod
    def phase2_bytes(layers: dict, targets, mode: str, rank: int, blocks: list[torch.nn.Module], element: int
                     ) -> dict[bool, int]:
        """What phase 2 adds, by gradient checkpointing off / on: the trained parameters with their gradients and
        Adam's two moments (fp32, 16 bytes each) and the ``W + change`` copies that autograd keeps for the backward
        pass (a wrapper makes one per adapted weight, in the compute dtype, ``element`` bytes): all of them without
        checkpointing; with it those outside the checkpointed ``blocks`` and the largest block's. And the layer
        being computed: ``up @ down`` (or the delta) and ``W + change`` in fp32 before the cast back."""
        if mode == "lora":
            chosen = [m for path, (_, m) in layers.items() if targets.match(path) and isinstance(m, torch.nn.Linear)]
            trained = sum(rank * (m.in_features + m.out_features) for m in chosen)
        else:
            chosen = [m for _, m in layers.values()]
            trained = sum(t.numel() for m in chosen for t in (m.weight, getattr(m, "bias", None)) if t is not None)
        copies = {id(m): m.weight.numel() * element for m in chosen}
        per_block = [sum(copies.get(id(m), 0) for m in block.modules()) for block in blocks]
        total = sum(copies.values())
        outside = total - sum(per_block)
        transient = 2 * 4 * max((m.weight.numel() for m in chosen), default=0)
        return {False: trained * 16 + total + transient,
                True: trained * 16 + outside + max(per_block, default=0) + transient}

    # -- attaching --------------------------------------------------------------------------------------------------
    def add_lora(self, patcher, prefix: str, layers: dict, targets, rank: int, alpha: float,
                 generator: torch.Generator) -> None:
        """LoRA on the layers whose pack path matches ``targets`` (in path order: the engine's draw order)."""
        chosen = sorted(path for path, (_, module) in layers.items()
                        if targets.match(path) and isinstance(module, torch.nn.Linear))
        if not chosen:
            raise ValueError("no attention projection matched the LoRA targets")
        for path in chosen:
            key, module = layers[path]
            wrapper = LoRAWeight(module.weight, rank, alpha, generator)
            patcher.add_weight_wrapper(f"{key}.weight", wrapper)
            self.lora[f"{prefix}.{path}"] = wrapper
            self.touched.append(module)

    def add_deltas(self, patcher, prefix: str, layers: dict) -> None:
        """A trainable delta on every weight and bias of the layers."""
        for path, (key, module) in sorted(layers.items()):
            for part in ("weight", "bias"):
                tensor = getattr(module, part, None)
                if tensor is None:
                    continue
                wrapper = DeltaWeight(tensor)
                patcher.add_weight_wrapper(f"{key}.{part}", wrapper)
                self.deltas[f"{prefix}.{path}.{part}"] = wrapper
            self.touched.append(module)

    def parameters(self) -> list[torch.nn.Parameter]:
        return ([p for wrapper in self.lora.values() for p in (wrapper.down, wrapper.up)]
                + [wrapper.delta for wrapper in self.deltas.values()])

    def remove(self) -> None:
        """Take the wrappers off ComfyUI's layers (ComfyUI also drops them at the next load of the model)."""
        for module in self.touched:
            for attribute in ("weight_function", "bias_function"):
                functions = getattr(module, attribute, None)
                if functions:
                    setattr(module, attribute, [f for f in functions if not is_ours(f)])
        self.touched.clear()

    # -- the pack -------------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(LoRA, deltas) in the pack's format (``bas_engine.lora.lora_state_dict``; deltas that are not zero)."""
        lora = {}
        for name, wrapper in self.lora.items():
            lora[f"{name}.lora_down"] = wrapper.down.detach().float().cpu().contiguous()
            lora[f"{name}.lora_up"] = wrapper.up.detach().float().cpu().contiguous()
            lora[f"{name}.alpha"] = torch.tensor(wrapper.alpha)
        deltas = {}
        for name, wrapper in self.deltas.items():
            delta = wrapper.delta.detach().float().cpu()
            if torch.count_nonzero(delta):
                deltas[name] = delta.contiguous()
        return lora, deltas


__all__ = ["TrainableWeights", "LoRAWeight", "DeltaWeight", "UNET_TARGETS", "TEXT_ENCODER_TARGETS"]
