"""No host sync in a steady-state training step: between logging steps nothing in the training thread reads a
tensor's value (`aten._local_scalar_dense`: `.item()`, `bool()`, `float()`, `int()` of a tensor; `Tensor.tolist`).
On a GPU each such read drains the queue of launched kernels. Counted on CPU through `voxfm pretrain`'s own loop."""

from __future__ import annotations

import threading
from collections import Counter

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import voxfm.pretrain.launch.run
from voxfm.pretrain.cli.compose import load_config
from voxfm.pretrain.runtime.logging_steps import is_logging_step

READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default)


pytestmark = pytest.mark.slow


class TensorReads(TorchDispatchMode):
    """Counts tensor-value reads in the thread that entered it, per step window. A window runs from the transfer
    of the step's batch (the device-side views read there, before `on_train_batch_start`) to the next one."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()
        self.step: int | None = None  # None: before the first batch (setup, sanity checks)
        self.reads: Counter = Counter()
        self.logging: dict[int, bool] = {}

    def count(self) -> None:
        if threading.get_ident() == self.thread:
            self.reads[self.step] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.count()
        return func(*args, **(kwargs or {}))


class StepWindows(L.Callback):
    """Moves the counter to step k when batch k reaches the module, and records whether k is a logging step."""

    def __init__(self, counter: TensorReads):
        self.counter = counter

    def on_train_start(self, trainer, pl_module):
        original = pl_module.on_before_batch_transfer

        def mark(batch, dataloader_idx):
            self.counter.step = trainer.fit_loop.epoch_loop._batches_that_stepped
            return original(batch, dataloader_idx)

        pl_module.on_before_batch_transfer = mark  # an instance attribute: Lightning looks hooks up by name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counter.logging[trainer.fit_loop.epoch_loop._batches_that_stepped] = is_logging_step(trainer)


def count_reads(monkeypatch, overrides: list[str]) -> TensorReads:
    """Runs `run_pretrain` with a read counter around it; returns the counter."""
    counter = TensorReads()
    build_trainer = voxfm.pretrain.launch.run.build_trainer

    def with_windows(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.callbacks.append(StepWindows(counter))
        return trainer

    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counter.count()
        return tolist(self)

    monkeypatch.setattr(voxfm.pretrain.launch.run, "build_trainer", with_windows)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    with counter:
        voxfm.pretrain.launch.run.run_pretrain(load_config("pretrain", overrides))
    return counter


@pytest.mark.parametrize("experiment", ["demo", "demo_mim", "demo_simclr", "demo_mae_contrastive"])
def test_no_tensor_reads_outside_logging_steps(experiment, tmp_path, shard_dir, monkeypatch):
    counter = count_reads(
        monkeypatch,
        [
            f"experiment={experiment}",
            f"data.shards={shard_dir}",
            f"run_dir={tmp_path}",
            "trainer.max_steps=6",
            "trainer.log_every_n_steps=3",
            "trainer.progress_bar=true",
            "trainer.images_every_n_steps=0",
            "data.num_workers=0",
            "data.batch_size=2",
            "trainer.checkpoint_every_n_steps=1000",
        ],
    )
    assert sorted(counter.logging) == list(range(6))
    assert [s for s, logs in counter.logging.items() if logs] == [2, 5]
    assert counter.reads[2] > 0 and counter.reads[5] > 0  # the counter sees reads: metrics, progress bar, NaN check
    # step 0 may read while it counts the FLOPs and measures the matmul ceiling for train/mfu: not asserted
    quiet = {s: counter.reads[s] for s, logs in counter.logging.items() if not logs and s >= 1}
    assert quiet == dict.fromkeys(quiet, 0), f"reads per step: {dict(counter.reads)}"
