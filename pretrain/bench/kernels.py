"""`voxfm bench model experiment=<name> kernels=true`: what one compiled training step launches, counted on this
machine (no GPU needed), in the precision a GPU trains in (bf16 autocast; fp32 with `precision=fp32`).

- **Generated kernels and their bytes**, inductor's own count: every graph of the step (the views; objective +
  backbone + loss, forward and backward) is lowered here with the FX graph and AOT autograd caches off, and
  inductor's `count_bytes` (the bytes each fused kernel reads and writes, read through its `inductor_metrics` log)
  is summed per graph. A GPU lowers the same graphs into the same fusions; tile shapes and GEMM templates differ.
- **Eager ops outside the graphs**, per step: a dispatch mode that steps aside while a compiled graph runs sees
  every other op of the step (the backward's extern GEMMs included, the optimiser, bookkeeping); random-number and
  dtype-cast ops among them are listed by name — the goal is none.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from voxfm.pretrain.bench.model import voxfm_step

RANDOM = re.compile(r"rand|normal|uniform|bernoulli|random_|exponential|multinomial|geometric|cauchy")


def _is_cast(func, args, kwargs) -> bool:
    """A dtype conversion: `_to_copy`/`to` with another dtype, or a `copy_` between dtypes."""
    name = func.__name__
    if name.startswith(("_to_copy", "to.")) and args and isinstance(args[0], torch.Tensor):
        dtype = kwargs.get("dtype", next((a for a in args[1:] if isinstance(a, torch.dtype)), None))
        return dtype is not None and dtype != args[0].dtype
    if name.startswith("copy_") and len(args) > 1 and all(isinstance(a, torch.Tensor) for a in args[:2]):
        return args[0].dtype != args[1].dtype
    return False


class EagerOps(TorchDispatchMode):
    """Counts the aten ops dispatched eagerly, and the random and cast ones by name."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.random_or_cast: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if RANDOM.search(func.__name__) or _is_cast(func, args, kwargs):
            self.random_or_cast[str(func)] += 1
        return func(*args, **kwargs)


def outside_modes(fn):
    """fn, run with the dispatch modes set aside: a compiled graph runs as compiled (dynamo refuses to run under a
    user mode), and its kernels are not counted as eager ops."""

    def call(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)

    return call


class GraphBytes(logging.Handler):
    """Collects inductor's per-graph `num_bytes_accessed` from its metrics log."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.graphs: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, dict) and "num_bytes_accessed" in args:
            self.graphs.append(int(args["num_bytes_accessed"]))


@contextlib.contextmanager
def inductor_bytes():
    """Inside: every graph is lowered here (no cache) and its bytes collected; yields the handler."""
    import torch._functorch.config as functorch_config
    import torch._inductor.compile_fx as compile_fx
    from torch._inductor import config, metrics

    log, handler = compile_fx.inductor_metrics_log, GraphBytes()
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False  # the per-node dump is large: collected, not printed
    log.addHandler(handler)
    metrics.reset()
    try:
        with config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
            yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def count_kernels(cfg, steps: int = 2, precision: str = "bf16") -> dict:
    """→ the compiled step's generated kernels and bytes (per graph, in total, per view) and the eager ops per step
    outside the graphs, on the CPU."""
    from torch._inductor import metrics

    device = torch.device("cpu")

    def autocast():
        on = precision == "bf16"
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)

    torch._dynamo.reset()  # graphs compiled earlier in this process would be reused, not lowered and counted
    with inductor_bytes() as graphs:
        step, _, views, module = voxfm_step(cfg, device, autocast, compiled=True)
        step()  # compiles every graph, the backward's included
        generated = metrics.generated_kernel_count
    wrap = module.compiled.wrap
    module.compiled.wrap = lambda name, fn: outside_modes(wrap(name, fn))
    step()  # a second step first: the optimiser's state is made at the first
    counter = EagerOps()
    with counter:
        for _ in range(steps):
            step()
    total = sum(graphs.graphs)
    return {
        "device": "cpu (inductor)",
        "precision": "bf16-mixed" if precision == "bf16" else "fp32",
        "batch": cfg.data.batch_size,
        "views_per_step": views,
        "graphs": len(graphs.graphs),
        "generated_kernels": generated,
        "bytes_per_graph_mb": [round(b / 1e6, 1) for b in graphs.graphs],
        "bytes_mb": round(total / 1e6, 1),
        "bytes_per_view_mb": round(total / views / 1e6, 2),
        "eager_ops_per_step": round(counter.ops / steps, 1),
        "eager_random_or_cast_per_step": round(sum(counter.random_or_cast.values()) / steps, 1),
        "eager_random_or_cast": {k: v / steps for k, v in counter.random_or_cast.items()},
    }


def format_kernels(result: dict, experiment: str) -> str:
    rc = result["eager_random_or_cast"]
    listed = ", ".join(f"{k} {v:g}" for k, v in sorted(rc.items(), key=lambda kv: -kv[1])) or "none"
    return "\n".join(
        [
            f"{experiment}: the compiled step's kernels, {result['device']}, {result['precision']}, "
            f"batch {result['batch']} ({result['views_per_step']} views)",
            f"  generated kernels      {result['generated_kernels']} in {result['graphs']} graphs",
            f"  bytes they move        {result['bytes_mb']} MB ({result['bytes_per_view_mb']} MB per view); "
            f"per graph {result['bytes_per_graph_mb']}",
            f"  eager ops per step     {result['eager_ops_per_step']:g} outside the graphs",
            f"  random/cast among them {result['eager_random_or_cast_per_step']:g}: {listed}",
        ]
    )
