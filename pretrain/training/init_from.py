"""`voxfm pretrain init_from=<format=full export>`: continue pretraining on new data from exported weights.

The module starts with every exported weight (strict: a mismatch names each bad key), a fresh optimiser,
and the exported step: step counter, learning-rate schedule and checkpoint names carry on from there, as
if the original run had gone on (on new data). A run_dir that already has checkpoints resumes from
them instead: `init_from` only seeds a new run.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from voxfm.data.ingest.safe_files import read_small_text
from voxfm.models.weights import load_strict
from voxfm.pretrain.errors import ConfigError, config_errors


def read_full_export(folder: str) -> tuple[dict, dict]:
    path = Path(folder)
    if not (path / "full.json").is_file() or not (path / "model.safetensors").is_file():
        raise ConfigError(
            f"init_from={folder}: expected an export made with `voxfm export format=full` "
            "(full.json + model.safetensors)"
        )
    try:
        meta = json.loads(read_small_text(path / "full.json"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"init_from={folder}: full.json unreadable ({type(err).__name__}: {err})") from None
    # full.json is data: only its step is read (the module is built from this run's own config)
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or isinstance(meta["step"], bool):
        raise ConfigError(f"init_from={folder}: full.json must be a mapping with an integer step")
    from voxfm.pretrain.training.checkpoints import read_safetensors

    return meta, read_safetensors(path / "model.safetensors", f"init_from={folder}")


def init_module(module, folder: str, max_steps: int) -> int:
    """Loads the export into `module`; returns the step to continue from."""
    meta, state = read_full_export(folder)
    with config_errors():  # the export does not fit this experiment's network
        load_strict(module, state, f"init_from={folder}")
    step = int(meta["step"])
    if step < 0:
        raise ConfigError(f"init_from={folder}: full.json's step {step} is negative")
    if step >= max_steps:
        raise ConfigError(f"init_from={folder} is at step {step}: set trainer.max_steps above it to train further")
    return step


class ContinueFromStep(L.Callback):
    """At the start of a fresh fit, moves the step counter and the LR schedule to `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_start(self, trainer, pl_module):
        if trainer.global_step != 0:  # resumed from a checkpoint of this run: it already has its step
            return
        loop = trainer.fit_loop.epoch_loop
        loop.automatic_optimization.optim_progress.optimizer.step.total.ready = self.step
        loop.automatic_optimization.optim_progress.optimizer.step.total.completed = self.step
        loop._batches_that_stepped = self.step
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.last_epoch = self.step
            if not hasattr(scheduler, "lr_lambdas"):
                raise ValueError(f"init_from: cannot move a {type(scheduler).__name__} to step {self.step}")
            lrs = [base * schedule(self.step) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, lr in zip(scheduler.optimizer.param_groups, lrs):
                group["lr"] = lr
            scheduler._last_lr = list(lrs)
