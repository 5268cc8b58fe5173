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

from voxfm.pretrain.errors import CheckpointWriteError
from voxfm.pretrain.training.checkpoints import deepspeed_weights_only


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
            raise CheckpointWriteError(
                f"cannot write DeepSpeed checkpoint {path} ({type(err).__name__}: {err}); "
                "earlier checkpoints are intact: free space, then rerun to resume"
            ) from err
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


def build_strategy(strategy: dict, on_gpu: bool, load_universal: bool = False):
    """strategy: the `strategy` config group → what `L.Trainer(strategy=...)` takes. `load_universal`: the resume
    checkpoint is a universal one (any world size)."""
    name = strategy["name"]
    if name != "deepspeed":
        return name
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is imported, here and in every rank
    kwargs = {
        "stage": strategy["stage"],
        "offload_optimizer": strategy["offload_optimizer"],
        "logging_batch_size_per_gpu": 1,
    }
    built = VoxfmDeepSpeedStrategy(**kwargs) if on_gpu else CPUDeepSpeedStrategy(**kwargs)
    if load_universal:
        built.config["checkpoint"] = {"load_universal": True}
    return built


def universal_checkpoint(path: Path, convert: bool, timeout_s: float = 3600) -> Path:
    """DeepSpeed folder → `<folder>.universal`, DeepSpeed's world-size-independent format, converted once
    (`ds_to_universal --inject_missing_state`, weights-only reads). `convert=False` ranks wait for the one that
    converts. Resume from it with `load_universal` (see `build_strategy`)."""
    import argparse
    import time

    out = path.with_name(path.name + ".universal")
    if (out / "latest").is_file():
        return out
    if not convert:
        deadline = time.time() + timeout_s
        while not (out / "latest").is_file():
            if time.time() > deadline:
                raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to write {out}")
            time.sleep(1)
        return out
    import deepspeed.checkpoint.ds_to_universal as ds_to_universal

    tmp = path.with_name(path.name + ".universal.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(path / "checkpoint"),
        output_folder=str(tmp / "checkpoint"),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    with deepspeed_weights_only():
        ds_to_universal.main(args)
    (tmp / "latest").write_text("checkpoint")
    os.replace(tmp, out)
    return out
