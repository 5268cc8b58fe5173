"""Callbacks that shape what a checkpoint holds and when: the run config and the shard set's preprocessing
inside every checkpoint (`ConfigInCheckpoint`), and the last step always saved (`FinalCheckpoint`). Which
checkpoints are kept is `callbacks.retention`; how one is written to disk is `training.checkpoint_io`."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class ConfigInCheckpoint(L.Callback):
    """Stores the run config and the shard set's preprocessing in each checkpoint: export needs nothing else."""

    def __init__(self, config: dict, data: dict):
        self.config, self.data = config, data

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["voxfm_config"] = self.config
        checkpoint["voxfm_data"] = self.data


class FinalCheckpoint(L.Callback):
    """The run's last step is always on disk as `stepNNNNNN.ckpt` + `last.ckpt`, also when `max_steps` is not a
    multiple of `checkpoint_every_n_steps` (periodic saves alone would leave up to that many steps unsaved)."""

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir = Path(checkpoint_dir)

    def _last_step(self) -> int | None:
        from voxfm.pretrain.training.checkpoints import load_checkpoint

        last = self.checkpoint_dir / "last.ckpt"
        try:
            return int(load_checkpoint(last, mmap=True)["global_step"]) if last.exists() else None
        except Exception:
            return None

    def on_train_end(self, trainer, pl_module):
        step = trainer.global_step
        periodic = self.checkpoint_dir / f"step{step:06d}.ckpt"
        # decided on rank 0 and shared: every rank must join a (possibly collective) save, or none
        todo = trainer.strategy.broadcast((not periodic.exists(), self._last_step() != step))
        if todo[0]:
            trainer.save_checkpoint(periodic, weights_only=False)
        if todo[1]:
            trainer.save_checkpoint(self.checkpoint_dir / "last.ckpt", weights_only=False)
