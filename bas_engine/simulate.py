"""Peak memory and operation count of a training step without computing it (torch's FakeTensorMode).

Where no GPU is at hand, and the CPU cannot run the configuration in reasonable time (a CPU without bf16
arithmetic emulates it at ~0.2-1 GFLOP/s: one SDXL step at 1024 px would take a day), the same training code
can still be run on *fake* tensors: every operation produces a tensor of the right shape, dtype and storage
size but computes nothing. `LiveTensorBytes` follows every storage the step creates and frees (autograd's saved
tensors, gradient checkpointing's recomputation, optimizer state), so its peak is what a caching allocator's
``max_memory_allocated`` counts: live tensor bytes, weights included, without the allocator's rounding, its
fragmentation or the runtime's own buffers (CUDA context, cuBLAS workspace). On real tensors it gives the
same figure for the same step (tests/test_simulate.py checks that), so the fake run is that run's memory.

What the simulation cannot reproduce is device-specific kernel choice: it dispatches as the CPU does (autocast's
CPU op lists, the CPU's attention kernel), which keeps attention at O(tokens) memory as CUDA's flash and
memory-efficient kernels do.
"""
from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Callable, Iterator
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive now and at the peak, counting each storage once (views share it)."""

    def __init__(self) -> None:
        super().__init__()
        self._alive: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage until it is freed (no-op if it is counted already)."""
        storage = tensor.untyped_storage()
        key = id(storage)
        known = self._alive.get(key)
        if known is not None and known() is storage:
            return
        size = storage.nbytes()
        self.current += size
        self.peak = max(self.peak, self.current)

        def freed(_ref: weakref.ref, size: int = size, key: int = key) -> None:
            self.current -= size
            self._alive.pop(key, None)

        self._alive[key] = weakref.ref(storage, freed)

    def track_modules(self, modules: list[torch.nn.Module]) -> None:
        """Count the weights and buffers that exist before the tracked work starts."""
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                self.track(tensor)

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


def _outside_fake_mode(fn: Callable) -> Callable:
    """``fn`` run on real tensors: for the few steps whose result depends on tensor values (tokenizing a prompt,
    finding its end-of-text position), which fake tensors do not have."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    def wrapped(*args, **kwargs):
        with unset_fake_temporarily():
            return fn(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def fake_tensors() -> Iterator[None]:
    """Build models and run training steps on fake CPU tensors (shapes, dtypes and sizes; no values).

    Three things of the engine need values or real storage and are replaced for the duration: the tokenizer's
    ids and the end-of-text positions are computed on real tensors; the model fingerprint (a hash of weight
    values) is a constant; moving modules to the CPU, where they are, is skipped (fake parameters cannot be
    swapped in place)."""
    from diffusers import ModelMixin
    from torch._subclasses.fake_tensor import FakeTensorMode

    from . import conditioning
    from .components import SDComponents

    def stay(self, *args, **kwargs):
        return self

    patches = [
        mock.patch.object(conditioning.TextConditioning, "tokenize",
                          _outside_fake_mode(conditioning.TextConditioning.tokenize)),
        mock.patch.object(conditioning, "end_of_text_positions",
                          _outside_fake_mode(conditioning.end_of_text_positions)),
        mock.patch.object(SDComponents, "fingerprint", lambda self: "simulated"),
        mock.patch.object(torch.nn.Module, "to", stay),
        mock.patch.object(ModelMixin, "to", stay),
    ]
    with FakeTensorMode(allow_non_fake_inputs=True), contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def step_figures(run, phase: int, memory: bool = True, flops: bool = True) -> dict:
    """Figures of one step of ``phase`` in an entered TrainingRun, after a step that sets the phase up (optimizer
    state, adapters), as the benchmark does: the peak of live tensor bytes (weights included) of a step, and the
    operations of a further step. The count has a step of its own: FlopCounterMode's module hooks keep tensors
    alive that the step would have freed (3.4 GiB more at SDXL 1024 px), so it must not run while memory is
    tracked. A figure not asked for is None."""
    optimizer = run.start_phase(phase)
    draw = lambda: run.sampler.draw_batch(run.config.batch_size)  # noqa: E731
    peak = operations = None
    if memory:
        gc.collect()  # garbage of earlier work is not this step's (during the step, collection runs as it would)
        tracker = LiveTensorBytes()
        tracker.track_modules(list(run.model.c.modules()))
        with tracker:
            run.optimize(optimizer, draw())
            tracker.reset_peak()
            run.optimize(optimizer, draw())
        peak = tracker.peak
    else:
        run.optimize(optimizer, draw())
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            run.optimize(optimizer, draw())
        operations = counter.get_total_flops()
    del optimizer
    return {"peak_bytes": peak, "flops": operations}
