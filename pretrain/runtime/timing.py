"""The one timer every `voxfm bench` and the `Efficiency` callback use: device time with CUDA events on CUDA,
`perf_counter` elsewhere; and the matmul rate both take as a device's peak when none is given.

A host clock around asynchronous CUDA work measures when the host queued the kernels, not when the GPU ran
them; events recorded on the stream bracket the GPU's own execution (idle gaps the host leaves included,
which is what a training step pays).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch

Reduce = Literal["mean", "best"]
REDUCES = ("mean", "best")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer_name(device: torch.device) -> str:
    return "CUDA events" if device.type == "cuda" else "perf_counter"


def time_call(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 0,
    steps: int = 1,
    reduce: Reduce = "mean",
) -> float:
    """Seconds per call of `fn` after `warmup` untimed calls: the mean over `steps` calls (one interval around
    them all) or the best single call (one interval per call)."""
    device = torch.device(device)
    if reduce not in REDUCES:
        raise ValueError(f"reduce={reduce!r}: expected one of {REDUCES}")
    if steps < 1:
        raise ValueError(f"steps={steps}: expected at least 1 timed call")
    for _ in range(warmup):
        fn()
    intervals = 1 if reduce == "mean" else steps
    calls = steps if reduce == "mean" else 1
    sync(device)
    if device.type == "cuda":
        marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(intervals)]
        for start, end in marks:
            start.record()
            for _ in range(calls):
                fn()
            end.record()
        sync(device)
        seconds = [start.elapsed_time(end) / 1e3 for start, end in marks]
    else:
        seconds = []
        for _ in range(intervals):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            seconds.append(time.perf_counter() - start)
    return sum(seconds) / steps if reduce == "mean" else min(seconds)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> float:
    """Seconds of the fastest of `repeats` calls of `fn`, no warm-up: best of N, for work whose slower runs are
    disturbance (page cache, other processes), not part of its cost."""
    return time_call(fn, device, steps=repeats, reduce="best")


def wall_time(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Host seconds of one call until the device is done: for one-off costs such as compilation, which happen
    on the host."""
    device = torch.device(device)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measured_peak_tflops(device: torch.device) -> float:
    """A square matmul's rate: bf16 on CUDA, fp32 elsewhere (the precision each trains in)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, device, warmup=2, steps=10 if device.type == "cuda" else 3)
    return 2 * n**3 / seconds / 1e12
