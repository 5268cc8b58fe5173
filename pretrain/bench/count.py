"""The work of one training step, counted on the CPU without doing it: FLOPs per op class, bytes moved by the other
ops, kernel launches. What `voxfm bench model predict=<card>` puts through its roofline (`pretrain/bench/predict.py`).

Every aten op of the step passes through `StepCounter`. A GEMM, convolution or attention op is counted with
`torch.utils.flop_counter`'s own formulas (a CPU attention kernel with the formula of the GPU kernel that runs in
its place); any other op that launches a kernel (not a view) is one launch and moves the unique bytes of its tensor
inputs and outputs, at their dtypes (eager: no fusion, as in the calibration rows).

The counts need shapes, not values, so most ops are not computed: the output is an uninitialised tensor of the
shape and strides its meta kernel gives, and its storage is marked as holding no values. An op computes only when
its values may decide what follows: a factory or random draw, or an op on unmarked inputs whose outputs are small
(per-sample draws: crop corners, scales) or integer/boolean (indices, masks, the regions' gather). So the step
takes its own path with its own shapes (no step reads an activation's value to decide a shape: the hot-path
rule); a 160³ ResEnc step counts in seconds and a few hundred MB, where running it takes minutes and 13 GB.
A small output that is not computed is zeros, so that code which does read a value on the host (the rejection loop
of `trunc_normal_` at initialisation: `while mask.any()`) reads "nothing to redo" rather than stale memory.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, fields

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
GEMM = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
CONV = {aten.convolution, aten._convolution, aten.convolution_backward}
ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: aten._scaled_dot_product_flash_attention_backward,
    **{op: op for op in flop_registry if "attention" in str(op) and not str(op).startswith("flex")},
}
NO_KERNEL = {aten._unsafe_view, aten.lift_fresh, aten.empty, aten.empty_like, aten.empty_strided}
SMALL = 4096  # outputs of fewer elements are computed: per-sample draws decide crops, masks, which rows get noise


@dataclass(frozen=True)
class Work:
    """One step's work: FLOPs of GEMMs, convolutions and attention; bytes the other ops move; kernel launches."""

    gemm_flop: float
    conv_flop: float
    attention_flop: float
    bytes: float
    launches: float

    @property
    def flop(self) -> float:
        return self.gemm_flop + self.conv_flop + self.attention_flop

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def at_batch(small: Work, large: Work, b_small: int, b_large: int, batch: int) -> Work:
    """The work at `batch`, from counts at two smaller batches: FLOPs and bytes on the line through them (the
    optimiser, autocast's weight casts and the like are the intercept), launches the larger count's (an eager step
    launches per op, not per sample)."""
    slope = 1.0 / (b_large - b_small)

    def line(name: str) -> float:
        a, b = getattr(small, name), getattr(large, name)
        return max(0.0, b + (b - a) * slope * (batch - b_large))

    return Work(line("gemm_flop"), line("conv_flop"), line("attention_flop"), line("bytes"), large.launches)


def _unique_bytes(t: torch.Tensor, float_bytes: int | None) -> int:
    """Bytes a kernel touches for `t`: a broadcast (stride 0) axis is read once; a floating tensor at
    `float_bytes` per element when set (a bf16-weights step counted in fp32)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        n *= size if stride != 0 else 1
    return n * (float_bytes if float_bytes and t.is_floating_point() else t.element_size())


def _meta(t):
    if not isinstance(t, torch.Tensor):
        return t
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


class StepCounter(TorchDispatchMode):
    """Counts every op under it while counting; computes only what decides shapes (see the module's doc)."""

    def __init__(self):
        super().__init__()
        self.counting = False
        self.float_bytes: int | None = None
        self.tally: Counter[str] = Counter()
        self.no_values: weakref.WeakSet = weakref.WeakSet()  # storages of outputs not computed (and their views)

    def count(self, step, warmup: int = 1, float_bytes: int | None = None) -> Work:
        """The work of one call of `step` (forward, backward, optimiser: a training step) after `warmup` uncounted
        calls, which create the optimiser's state (a first step's extra kernels). Build the step under this mode
        too: a builder's own trial forward then costs nothing."""
        for _ in range(warmup):
            step()
        self.tally.clear()
        self.counting, self.float_bytes = True, float_bytes
        try:
            step()
        finally:
            self.counting, self.float_bytes = False, None
        t = self.tally
        return Work(t["gemm"], t["conv"], t["attention"], t["bytes"], t["launches"])

    def _stub(self, func, args, kwargs):
        """The output of `func` from its meta kernel, allocated but not computed; None when it must run (the
        module's doc) or has no meta kernel."""
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not tensors or any(t.device.type == "meta" for t in tensors):
            return None
        originals = {}

        def to_meta(t):
            m = _meta(t)
            if isinstance(t, torch.Tensor):
                originals[id(m)] = t
            return m

        try:
            out = func(*tree_map(to_meta, args), **tree_map(to_meta, kwargs))
        except (NotImplementedError, RuntimeError, TypeError, ValueError):
            return None
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        valued = not any(t.untyped_storage() in self.no_values for t in tensors)
        small = max((t.numel() for t in outs), default=0) < SMALL
        if valued and (small or any(not t.is_floating_point() for t in outs)):
            return None

        def materialise(m):
            if not isinstance(m, torch.Tensor):
                return m
            t = originals.get(id(m))  # in place or out=: the argument itself
            if t is None:
                t = torch.empty_strided(m.shape, m.stride(), dtype=m.dtype, device=tensors[0].device)
                if t.numel() < SMALL:  # a value read on the host (a loop's `mask.any()`) reads zeros, not garbage
                    t.zero_()
            self.no_values.add(t.untyped_storage())
            return t

        return tree_map(materialise, out)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        kernel = not (func.is_view or packet in NO_KERNEL)
        out = self._stub(func, args, kwargs) if kernel else None
        if out is None:
            out = func(*args, **kwargs)
        if not (self.counting and kernel):
            return out
        self.tally["launches"] += 1
        if packet in GEMM or packet in CONV or packet in ATTENTION:
            kind = "gemm" if packet in GEMM else "conv" if packet in CONV else "attention"
            self.tally[kind] += flop_registry[ATTENTION.get(packet, packet)](*args, **kwargs, out_val=out)
        else:
            self.tally["bytes"] += sum(
                _unique_bytes(t, self.float_bytes)
                for t in tree_flatten((args, kwargs, out))[0]
                if isinstance(t, torch.Tensor)
            )
        return out
