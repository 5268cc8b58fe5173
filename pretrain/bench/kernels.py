"""`voxfm bench model experiment=<name> kernels=true`: what one compiled training step launches, counted on this
machine (no GPU needed), in the precision a GPU trains in (bf16 autocast).

- **Generated kernels and their bytes**, inductor's own count: every graph of the step (the views; objective +
  backbone + loss, forward and backward) is lowered here with the FX graph and AOT autograd caches off, and
  inductor's `count_bytes` (the bytes each fused kernel reads and writes, read through its `inductor_metrics` log)
  is summed per graph, generated kernels apart from library calls (GEMMs, attention and the ops inductor leaves to
  aten, such as sort and grid_sample: their operands' bytes).
  Counted at the batch and at twice it: the slope is the bytes per view (what a large GPU batch pays), the rest
  is fixed per step (mostly the weights' bf16 casts, which a small batch makes look large).
  A GPU lowers the same graphs into the same fusions; tile shapes and GEMM templates differ.
- **Eager ops outside the graphs**, per step: a dispatch mode that steps aside while a compiled graph runs sees
  every other op of the step (the backward's extern GEMMs included, the optimiser, bookkeeping); random-number and
  dtype-cast ops among them are listed by name — the goal is none.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections import Counter

import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from voxfm.pretrain.bench.model import voxfm_step
from voxfm.pretrain.training.precision import view_dtype

RANDOM = re.compile(r"rand|normal|uniform|bernoulli|dropout|random_|exponential|multinomial|geometric|cauchy")


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
    """Collects inductor's per-graph bytes from its metrics log: (generated kernels', library calls') — GEMMs,
    convolutions, attention and the ops inductor leaves to aten (sort, grid_sample) are library calls ("extern
    kernels"), the rest inductor generates."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.graphs: list[tuple[int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, dict) and "nodes_num_elem" in args:
            split = [0, 0]
            for node, words in args["nodes_num_elem"]:  # count_bytes' bytes // 4 per scheduler node
                split[type(node).__name__.startswith("ExternKernel")] += 4 * words
            self.graphs.append((split[0], split[1]))


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


def _compiled_bytes(cfg, autocast, dtype) -> tuple[list[tuple[int, int]], int, int, object, object]:
    """Compiles one step of `cfg` from scratch → ((generated, library) bytes per graph, generated kernels, views per
    step, step, module)."""
    from torch._inductor import metrics

    torch._dynamo.reset()  # graphs compiled earlier in this process would be reused, not lowered and counted
    with inductor_bytes() as graphs:
        step, _, views, module = voxfm_step(cfg, torch.device("cpu"), autocast, compiled=True, dtype=dtype)
        step()  # compiles every graph, the backward's included
        return graphs.graphs, metrics.generated_kernel_count, views, step, module


def count_kernels(cfg, steps: int = 2, precision: str = "bf16") -> dict:
    """→ the compiled step's generated kernels and bytes per graph at the configured batch, the bytes per view and
    the fixed bytes (weights, optimiser-free bookkeeping: what does not grow with the batch) from the line through
    that batch and twice it, and the eager ops per step outside the graphs, on the CPU."""

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    dtype = view_dtype("bf16-mixed" if precision == "bf16" else "32-true")  # the views', as training writes them

    batch = cfg.data.batch_size
    double = copy.deepcopy(cfg)
    OmegaConf.update(double, "data.batch_size", 2 * batch)
    graphs2, _, views2, _, _ = _compiled_bytes(double, autocast, dtype)
    graphs, kernels, views, step, module = _compiled_bytes(cfg, autocast, dtype)
    wrap = module.compiled.wrap
    module.compiled.wrap = lambda name, fn: outside_modes(wrap(name, fn))
    step()  # a second step first: the optimiser's state is made at the first
    counter = EagerOps()
    with counter:
        for _ in range(steps):
            step()
    (generated, extern), (generated2, extern2) = (tuple(map(sum, zip(*g))) for g in (graphs, graphs2))

    def per_view(one: int, two: int) -> float:
        return (two - one) / (views2 - views)

    return {
        "device": "cpu (inductor)",
        "precision": "bf16-mixed" if precision == "bf16" else "fp32",
        "batch": batch,
        "views_per_step": views,
        "graphs": len(graphs),
        "generated_kernels": kernels,
        "generated_mb_per_graph": [round(g / 1e6, 1) for g, _ in graphs],
        "generated_mb": round(generated / 1e6, 1),
        "library_mb": round(extern / 1e6, 1),
        "generated_mb_per_view": round(per_view(generated, generated2) / 1e6, 2),
        "library_mb_per_view": round(per_view(extern, extern2) / 1e6, 2),
        "generated_fixed_mb": round((generated - per_view(generated, generated2) * views) / 1e6, 1),
        "eager_ops_per_step": round(counter.ops / steps, 1),
        "eager_random_or_cast_per_step": round(sum(counter.random_or_cast.values()) / steps, 1),
        "eager_random_or_cast": {k: v / steps for k, v in counter.random_or_cast.items()},
    }


def format_kernels(result: dict, experiment: str) -> str:
    rc = result["eager_random_or_cast"]
    listed = ", ".join(f"{k} {v:g}" for k, v in sorted(rc.items(), key=lambda kv: -kv[1])) or "none"
    b = result["batch"]
    return "\n".join(
        [
            f"{experiment}: the compiled step's kernels, {result['device']}, {result['precision']}, "
            f"batch {b} ({result['views_per_step']} views)",
            f"  generated kernels      {result['generated_kernels']} in {result['graphs']} graphs, moving "
            f"{result['generated_mb']} MB per step (per graph {result['generated_mb_per_graph']})",
            f"                         = {result['generated_mb_per_view']} MB per view (from batch {b} and {2 * b}) + "
            f"{result['generated_fixed_mb']} MB fixed (the weights' casts, ...)",
            f"  library calls          {result['library_mb']} MB per step, {result['library_mb_per_view']} MB per view "
            "(GEMMs, attention, aten fallbacks such as sort)",
            f"  eager ops per step     {result['eager_ops_per_step']:g} outside the graphs",
            f"  random/cast among them {result['eager_random_or_cast_per_step']:g}: {listed}",
        ]
    )
