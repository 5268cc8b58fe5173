"""Callbacks: throughput logging, the run config inside every checkpoint, atomic checkpoint writes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class Throughput(L.Callback):
    """Logs samples/s over all ranks, measured batch start to batch start (includes data wait)."""

    def __init__(self):
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self._last is not None:
            samples = len(batch["modality"]) * trainer.world_size  # regions (a two-view sample counts once)
            pl_module.log("train/samples_per_s", samples / (now - self._last), prog_bar=True, batch_size=1)
        self._last = now


class ConfigInCheckpoint(L.Callback):
    """Stores the run config and the shard set's preprocessing in each checkpoint: export needs nothing else."""

    def __init__(self, config: dict, data: dict):
        self.config, self.data = config, data

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["voxfm_config"] = self.config
        checkpoint["voxfm_data"] = self.data


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<path>.tmp` then renames: a crash mid-write never leaves a truncated checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        fs = get_filesystem(path)
        fs.makedirs(str(path.parent), exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)
