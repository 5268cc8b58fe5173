"""Distribution strategies from `conf/strategy/`: Lightning's DDP and DeepSpeed ZeRO, on GPUs and on CPUs.

Lightning's `DeepSpeedStrategy` refuses a CPU accelerator only in `setup_environment`. `CPUDeepSpeedStrategy`
gives each rank an explicit CPU device index and sets the environment up the DDP way instead; DeepSpeed then
runs ZeRO 1-3 over gloo with `DS_ACCELERATOR=cpu`, which is how voxfm tests DeepSpeed without a GPU. On CUDA
the stock strategy runs, with two voxfm changes for both: checkpoint folders are written under `<name>.tmp`
and renamed once every rank has written its shard (a crash mid-save never leaves a half folder where resume
looks), and they are read with `weights_only=True`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from pretrain.checkpoints import deepspeed_weights_only
from pretrain.errors import CheckpointWriteError


class VoxfmDeepSpeedStrategy(DeepSpeedStrategy):
    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("voxfm_ds_save_start")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        except (OSError, RuntimeError) as err:
            raise CheckpointWriteError(f"cannot write DeepSpeed checkpoint {path} ({type(err).__name__}: {err}); "
                                       "earlier checkpoints are intact: free space, then rerun to resume") from err
        self.barrier("voxfm_ds_save_written")
        if self.is_global_zero:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.replace(tmp, path)
        self.barrier("voxfm_ds_save_done")

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        with deepspeed_weights_only():
            return super().load_checkpoint(checkpoint_path, weights_only)


class CPUDeepSpeedStrategy(VoxfmDeepSpeedStrategy):
    def setup_environment(self) -> None:
        self.parallel_devices = [torch.device("cpu", i) for i in range(len(self.parallel_devices or [None]))]
        DDPStrategy.setup_environment(self)


def build_strategy(strategy: dict, on_gpu: bool):
    """strategy: the `strategy` config group → what `L.Trainer(strategy=...)` takes."""
    name = strategy["name"]
    if name != "deepspeed":
        return name
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is imported, here and in every rank
    kwargs = {"stage": strategy["stage"], "offload_optimizer": strategy["offload_optimizer"],
              "logging_batch_size_per_gpu": 1}
    return VoxfmDeepSpeedStrategy(**kwargs) if on_gpu else CPUDeepSpeedStrategy(**kwargs)
