"""Efficiency in the metrics at logging steps: achieved TFLOP/s, MFU and peak memory (on a GPU), and the share of
time spent waiting for data.

FLOPs are counted once, on the first batch: the objective's forward under `FlopCounterMode` without gradients
(x3 for forward + backward, the usual estimate; compiled blocks run eagerly for the count). MFU divides the
achieved FLOP rate by `trainer.peak_tflops` per device, or by a bf16/fp32 matmul measured at the start. The time is
the device's, from one batch's end to the next's (the device-side views, queued before a batch starts, and data stalls
count): on CUDA, events recorded every step and read (`elapsed_time`, a sync) only at logging steps; on CPU, host
time. Figures average over the steps since the previous logging step.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from voxfm.pretrain.runtime.logging_steps import is_logging_step
from voxfm.pretrain.runtime.timing import measured_peak_tflops

BACKWARD_FACTOR = 3.0


class Efficiency(L.Callback):
    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops, self.flops_per_step = peak_tflops, None
        self._fetch_start = self._compute_start = self._last_end = None
        # (end of the previous step, end of this one) since the last logging step: CUDA events or host seconds.
        # End to end, so the device-side views (queued before on_train_batch_start) and data stalls count too.
        self._spans: list = []
        self._wait = self._host = 0.0  # host seconds waiting for data / in steps, since the last logging step

    def _count_flops(self, pl_module, batch) -> float:
        counter = FlopCounterMode(display=False)
        eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
        # under the step's own precision context: the views come in its half type (`view_dtype`), as autocast wants
        with torch.no_grad(), counter, eager, pl_module.trainer.precision_plugin.forward_context():
            pl_module.objective(batch, pl_module.backbone)
        return BACKWARD_FACTOR * counter.get_total_flops()

    @staticmethod
    def _mark(device: torch.device):
        if device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self.flops_per_step is None:
            self.flops_per_step = self._count_flops(pl_module, batch)
            if self.peak_tflops is None and pl_module.device.type == "cuda":
                self.peak_tflops = measured_peak_tflops(pl_module.device)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            now = time.perf_counter()
        if self._fetch_start is not None:
            self._wait += now - self._fetch_start
        self._compute_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        end = self._mark(pl_module.device)
        if self._last_end is not None:
            self._spans.append((self._last_end, end))
        self._last_end = end
        self._host += now - self._compute_start
        if self._spans and is_logging_step(trainer, batch_idx):
            pl_module.log_dict(self._figures(pl_module.device), batch_size=1)
            self._spans, self._wait, self._host = [], 0.0, 0.0
        self._fetch_start = time.perf_counter()

    def _figures(self, device: torch.device) -> dict[str, float]:
        if device.type == "cuda":
            self._spans[-1][1].synchronize()
            busy = sum(start.elapsed_time(end) for start, end in self._spans) / 1e3
        else:
            busy = sum(end - start for start, end in self._spans)
        tflops = self.flops_per_step * len(self._spans) / busy / 1e12
        logs = {"train/data_wait": self._wait / (self._wait + self._host), "train/tflops": tflops}
        if device.type == "cuda":  # the allocator's own record: no sync
            logs["train/mfu"] = tflops / self.peak_tflops  # a CPU has no peak worth the name: no MFU there
            logs["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return logs
