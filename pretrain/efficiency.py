"""Per-step efficiency in the metrics: MFU, peak device memory, and the share of each step spent waiting for data.

FLOPs are counted once, on the first batch: the objective's forward under `FlopCounterMode` without gradients
(x3 for forward + backward, the usual estimate; compiled blocks run eagerly for the count). MFU divides the
achieved FLOP rate by `trainer.peak_tflops` per device, or by a bf16/fp32 matmul measured at the start.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

BACKWARD_FACTOR = 3.0


def measured_peak_tflops(device: torch.device) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, reps = time.perf_counter(), 10 if device.type == "cuda" else 3
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


class Efficiency(L.Callback):
    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops, self.flops_per_step = peak_tflops, None
        self._fetch_start = self._compute_start = None

    def _count_flops(self, pl_module, batch) -> float:
        counter = FlopCounterMode(display=False)
        eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
        with torch.no_grad(), counter, eager:
            pl_module.objective(batch, pl_module.backbone)
        return BACKWARD_FACTOR * counter.get_total_flops()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self.flops_per_step is None:
            self.flops_per_step = self._count_flops(pl_module, batch)
            if self.peak_tflops is None:
                self.peak_tflops = measured_peak_tflops(pl_module.device)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            now = time.perf_counter()
        if self._fetch_start is not None:
            self._wait = now - self._fetch_start
        self._compute_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._compute_start is not None and getattr(self, "_wait", None) is not None:
            step_s = now - self._compute_start + self._wait
            logs = {"train/data_wait": self._wait / step_s,
                    "train/mfu": self.flops_per_step / step_s / 1e12 / self.peak_tflops}
            if pl_module.device.type == "cuda":
                logs["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            pl_module.log_dict(logs, batch_size=1)
        self._fetch_start = now
