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


def resized_positions(module, state: dict, meta: dict) -> dict[str, list]:
    """A run at a larger (or smaller) crop than the export's — the high-resolution stage of self-distillation: each
    ViT position table whose token grid changed is made for the new grid, in place in `state`. A fixed (sincos)
    table is this module's own; a learned one is interpolated trilinearly from the export's grid. → {key: [old
    shape, new shape]}, recorded in events.jsonl. (Primus has no position table to resize: its RoPE is computed for
    whatever grid it is given.)"""
    import torch.nn.functional as F

    from voxfm.data.stream.crops import triple

    backbone, own, changed = module.backbone, module.state_dict(), {}
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    crop, patch = (config.get("data") or {}).get("crop_size"), (config.get("model") or {}).get("patch_size")
    if not hasattr(backbone, "grid") or crop is None or patch is None:
        return changed
    grid_old = [c // p for c, p in zip(triple(crop), triple(patch))]
    for key, old in list(state.items()):
        new = own.get(key)
        if not key.endswith("position_embeddings") or new is None or new.shape == old.shape or old.dim() != 3:
            continue
        if getattr(backbone, "pos_embed_type", None) == "sincos":
            state[key] = new.clone()  # fixed: computed for the new grid, nothing learned to carry over
        elif old.shape[1] == grid_old[0] * grid_old[1] * grid_old[2]:
            table = old.reshape(1, *grid_old, old.shape[-1]).permute(0, 4, 1, 2, 3).float()
            table = F.interpolate(table, size=tuple(backbone.grid), mode="trilinear", align_corners=False)
            state[key] = table.permute(0, 2, 3, 4, 1).reshape(new.shape).to(old.dtype)
        else:
            continue  # load_strict names the mismatch
        changed[key] = [list(old.shape), list(new.shape)]
    return changed


def init_module(module, folder: str, max_steps: int) -> int:
    """Loads the export into `module` (position tables resized for a new crop: `resized_positions`, kept in
    `module.init_resized`); returns the step to continue from."""
    meta, state = read_full_export(folder)
    module.init_resized = resized_positions(module, state, meta)
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
