"""`voxfm bench model experiment=<name>`: voxfm's training step, eager and compiled, next to MONAI's reference at
the same shapes, in one process.

One precision (bf16 autocast on CUDA, fp32 on CPU). voxfm's step is the training module's own pieces: the device
views (`module.views`: crop, augmentation, masks), objective + backbone (`module.loss`), backward and AdamW; the
compiled column builds the module with `trainer.compile=true`, the eager one with false. The reference steps are in
`pretrain/bench/reference.py`. Time is device time (`pretrain/runtime/timing.py`: CUDA events, perf_counter on CPU),
the mean over `steps` calls after `warmup`; compilation happens in the warm-up and is reported on its own. FLOPs
are counted with `FlopCounterMode` on one step run eagerly; MFU is against a matmul ceiling measured on the spot.
"""

from __future__ import annotations

import contextlib
import copy
import gc

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from voxfm.data.views.counter_random import step_key
from voxfm.pretrain.bench.reference import reference_step
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.runtime.timing import measured_peak_tflops, sync, time_call, timer_name
from voxfm.pretrain.training.precision import view_dtype

COLUMNS = ("eager", "compiled")


def significant(x: float, digits: int = 4) -> float:
    """Rounded to `digits` significant digits: CPU twins run at thousandths of a TFLOP/s, a few samples/s."""
    return float(f"{x:.{digits}g}")


def _flops(fn) -> int:
    """FLOPs of one call, compiled regions run eagerly: inductor's kernels are invisible to the counter."""
    counter = FlopCounterMode(display=False)
    with counter, torch.compiler.set_stance("force_eager"):
        fn()
    return counter.get_total_flops()


def _regions(cfg, module, device: torch.device) -> dict:
    """A synthetic batch as the data loader delivers it (int16 regions, CT normalisation)."""
    size = cfg.data.region_size or module.view_pipeline.region_size_needed()
    b = cfg.data.batch_size
    g = torch.Generator().manual_seed(0)
    region = torch.randint(-1000, 1000, (b, 1, *size), generator=g, dtype=torch.int16)
    return {
        "region": region.to(device),
        "low": torch.full((b,), -1000.0, device=device),
        "high": torch.full((b,), 1000.0, device=device),
        "modality": ["CT"] * b,
    }


def voxfm_step(
    cfg,
    device: torch.device,
    autocast,
    compiled: bool,
    batch: dict | None = None,
    dtype: torch.dtype = torch.float32,
):
    """→ (step, views-only call, views per step, module) with `trainer.compile=compiled`, on `batch` (a collated
    batch of regions, moved to the device once) or a synthetic one, views in `dtype` (training's `view_dtype`
    of its precision). Each call is a new training step (its own generator, as in training) and not a logging
    step."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, "trainer.compile", compiled)
    module = build_module(cfg).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    regions = (
        _regions(cfg, module, device)
        if batch is None
        else {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    )
    counter = iter(range(1 << 62))

    def views():
        batch = module.views(regions, step_key(device, cfg.seed, next(counter), 0), dtype)
        return {**batch, "log_step": False}

    def step():
        batch = views()
        with autocast():
            loss, _ = module.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, views, cfg.data.batch_size * module.view_pipeline.n_views, module


def _measure(step, views: int, device: torch.device, warmup: int, steps: int, ceiling: float) -> dict:
    """Peak memory is that of the timed steps: compilation and its autotuning stay out of it."""
    gc.collect()  # a compiled module holds itself through its compiled functions: freed only by the collector
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for _ in range(warmup):  # first: a compiled step compiles here, outside the timing
        step()
    flops = _flops(step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_call(step, device, warmup=1, steps=steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    tflops = flops / seconds / 1e12
    return {
        "samples_per_s": significant(views / seconds),
        "step_ms": significant(seconds * 1e3),
        "gflop_per_step": significant(flops / 1e9),
        "tflop_per_s": significant(tflops),
        "mfu": significant(tflops / ceiling),
        "peak_gib": None if peak is None else round(peak, 2),
    }


def measure_voxfm(
    cfg,
    device: torch.device,
    autocast,
    compiled: bool,
    warmup: int,
    steps: int,
    ceiling: float,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict, int]:
    """→ (the figures of voxfm's step, views per step); a compiled step warms up at least twice, so a
    recompilation on the second call (new generator, optimiser state) stays out of the timing too."""
    step, views_only, views, module = voxfm_step(cfg, device, autocast, compiled, dtype=dtype)
    row = _measure(step, views, device, max(warmup, 2) if compiled else warmup, steps, ceiling)
    row["views_ms"] = round(time_call(views_only, device, warmup=1, steps=steps) * 1e3, 2)
    row["compile_s"] = round(sum(module.compiled.compile_seconds.values()), 1) if compiled else None
    return row, views


def profile_table(step, device: torch.device, rows: int, steps: int = 3, warmup: int = 2) -> str:
    """The `rows` operators that take the most time over `steps` calls of `step` (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(warmup):  # compiled: compilation stays out of the profile
        step()
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"{steps} steps, by {key}:\n" + prof.key_averages().table(
        sort_by=key, row_limit=rows, max_name_column_width=60
    )


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    return None if a is None or b is None or not b[key] else round(a[key] / b[key], 2)


def bench_model(cfg, warmup: int = 2, steps: int = 5, profile: int = 0, compiled: bool = True) -> dict:
    """→ the figures of voxfm's step, eager and (if `compiled`) compiled, and of MONAI's reference;
    `profile` > 0 adds that many operator rows of a profile of voxfm's step (compiled if measured) under
    "profile"."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as in training (build_trainer), for every column

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    dtype = view_dtype("bf16-mixed" if device.type == "cuda" else "32-true")  # the views', as training writes them

    ceiling = measured_peak_tflops(device)
    rows: dict[str, dict | None] = dict.fromkeys(COLUMNS)
    for column in COLUMNS if compiled else COLUMNS[:1]:  # one module at a time on the device
        rows[column], views = measure_voxfm(cfg, device, autocast, column == "compiled", warmup, steps, ceiling, dtype)
    module = build_module(cfg)  # eager, on the host: the reference reads its shapes
    ref_step, ref_name, note = reference_step(module, float(cfg.optim.optimizer.lr), device, autocast, views)
    theirs = None
    if ref_step is not None:
        try:
            theirs = _measure(ref_step, views, device, warmup, steps, ceiling)
        except torch.cuda.OutOfMemoryError:
            note = "out of memory"
    table = None
    if profile > 0:  # last, on a fresh step: a profiler session leaves FlopCounterMode counting nothing after it
        ref_step = None  # the reference's memory back before another voxfm step is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        column = "compiled" if compiled else "eager"
        table = f"profile of voxfm's {column} step, " + profile_table(
            voxfm_step(cfg, device, autocast, compiled, dtype=dtype)[0], device, profile
        )
    best = rows["compiled"] or rows["eager"]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16-mixed" if device.type == "cuda" else "fp32",
        "timer": timer_name(device),
        "warmup": warmup,
        "steps": steps,
        "matmul_ceiling_tflop_per_s": significant(ceiling, 3),
        "views_per_step": views,
        "crop": list(cfg.data.crop_size),
        **rows,
        "reference": {
            "name": ref_name,
            "note": note,
            "out_of_memory": theirs is None and note == "out of memory",
            "absent": theirs is None and note != "out of memory",
            **(theirs or {}),
        },
        "compiled_vs_eager": _ratio(rows["compiled"], rows["eager"], "samples_per_s"),
        "vs_reference": {c: _ratio(rows[c], theirs, "samples_per_s") for c in COLUMNS},
        "ratio_samples_per_s": _ratio(best, theirs, "samples_per_s"),
        "ratio_tflop_per_s": _ratio(best, theirs, "tflop_per_s"),
        **({"profile": table} if table else {}),
    }


def _row(name: str, row: dict | None, note: str = "") -> str:
    if row is None:
        return f"  {name:<40}{note:>11}"
    peak = "-" if row.get("peak_gib") is None else row["peak_gib"]
    views = row.get("views_ms", "-")
    compiled = "-" if row.get("compile_s") is None else row["compile_s"]
    return (
        f"  {name:<40}{row['samples_per_s']:>11}{row['step_ms']:>9}{row['gflop_per_step']:>12}"
        f"{row['tflop_per_s']:>10}{row['mfu']:>8.1%}{peak:>10}{views:>10}{compiled:>11}"
    )


def format_model_bench(result: dict, experiment: str) -> str:
    r = result["reference"]
    lines = [
        f"{experiment}: {result['views_per_step']} views of {result['crop']} per step, {result['device']}, "
        f"{result['precision']}, matmul ceiling {result['matmul_ceiling_tflop_per_s']} TFLOP/s; "
        f"{result['timer']}, mean of {result['steps']} steps after {result['warmup']} warm-up",
        f"  {'':<40}{'samples/s':>11}{'step ms':>9}{'GFLOP/step':>12}{'TFLOP/s':>10}{'MFU':>8}{'peak GiB':>10}"
        f"{'views ms':>10}{'compile s':>11}",
        _row("voxfm eager", result["eager"]),
        _row("voxfm compiled (trainer.compile=true)", result["compiled"], "not run (compile=false)"),
        _row(
            r["name"],
            None if r["out_of_memory"] or r.get("absent") else r,
            "none" if r.get("absent") else "out of memory",
        ),
    ]
    if result["compiled_vs_eager"] is not None:
        lines.append(f"  compiled / eager: {result['compiled_vs_eager']}x samples/s")
    if r.get("absent"):
        lines.append(f"  voxfm / MONAI: {r['note']}")
    elif r["out_of_memory"]:
        lines.append("  voxfm / MONAI: MONAI ran out of memory at these shapes")
    else:
        vs = ", ".join(f"{c} {x}x" for c, x in result["vs_reference"].items() if x is not None)
        lines.append(
            f"  voxfm / MONAI samples/s: {vs}; TFLOP/s {result['ratio_tflop_per_s']}x"
            + (f"  ({r['note']})" if r["note"] else "")
        )
    lines.append(
        "  voxfm's step includes its device-side views (crops, augmentation, masks: 'views ms'); MONAI's "
        "starts from ready tensors"
    )
    return "\n".join(lines)
