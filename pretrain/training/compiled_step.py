"""The training step compiled as a whole (`trainer.compile=true`): the device-side views (their random draws too) in one
graph, objective + backbone + loss in another (its backward compiled with it), each with `fullgraph=True`, so a
graph break is an error, not a silent slowdown.

Random numbers are drawn inside the views' graph, hashed from the step's key (`data/views/counter_random.py`):
compiled code takes no generator, and views stay a pure function of (seed, step, rank). Objectives compute some
figures only on logging steps (`batch["log_step"]`), and a shard set may mix int16 and float32 regions: each such
variant is a named function of its own, compiled once when it first occurs, so switching between them is not a
recompilation. Compiled functions are made on first use in each process and never pickled (ddp_spawn pickles the
module before its children start).
"""

from __future__ import annotations

import os
import time
import types
from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_only

# What an objective reads from a batch: tensors and Python constants. Bookkeeping (modality strings, source
# indices, worker counts) stays out of the compiled call: dynamo would guard on those values and recompile.
OBJECTIVE_INPUTS = (
    "image",
    "mask",
    "n_visible",
    "n_views",
    "log_step",
    "local",
    "n_local",
    "masks",
    "n_masked_images",
    "max_hidden",
)


def objective_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in OBJECTIVE_INPUTS if k in batch}


def own_code(fn: Callable) -> Callable:
    """fn (a function or bound method) with a copy of its code object: dynamo caches graphs per code object, so
    each named variant gets a cache of its own instead of replacing or re-guarding another's."""
    func = getattr(fn, "__func__", fn)
    copy = types.FunctionType(
        func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    copy.__kwdefaults__, copy.__qualname__ = func.__kwdefaults__, func.__qualname__
    return types.MethodType(copy, fn.__self__) if hasattr(fn, "__self__") else copy


@rank_zero_only
def _report(name: str, seconds: float) -> None:
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "the default inductor cache (/tmp/torchinductor_<user>)")
    print(
        f"voxfm: torch.compile of {name}: first call {seconds:.1f} s (a backward compiles at its own first call; "
        f"kernels cached in {cache})",
        flush=True,
    )


class CompiledStep:
    """`wrap(name, fn)` → fn itself when disabled, else its compiled version: one per name (a variant: logging
    step or not, region dtype), made on first use."""

    def __init__(self, enabled: bool = False, mode: str = "default"):
        self.enabled, self.mode = enabled, mode  # mode: torch.compile's (max-autotune, reduce-overhead: GPU only)
        self._functions: dict[str, Callable] = {}
        self.compile_seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        if not self.enabled:
            return fn
        if name not in self._functions:
            compiled = torch.compile(own_code(fn), fullgraph=True, dynamic=False, mode=self.mode)
            self._functions[name] = self._timed(name, compiled)
        return self._functions[name]

    def _timed(self, name: str, compiled: Callable) -> Callable:
        def first_call(*args, **kwargs):
            start = time.perf_counter()
            out = compiled(*args, **kwargs)
            self.compile_seconds[name] = time.perf_counter() - start
            _report(name, self.compile_seconds[name])
            self._functions[name] = compiled
            return out

        return first_call

    def __getstate__(self) -> dict:
        return {"enabled": self.enabled, "mode": self.mode, "_functions": {}, "compile_seconds": {}}
