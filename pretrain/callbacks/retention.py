"""Checkpoint retention: the newest `trainer.keep_last_n` periodic checkpoints, plus every
`trainer.keep_every_n_steps`-th step as a milestone kept forever; `last.ckpt` is never touched.

A checkpoint appears under its final name only once completely written (`AtomicCheckpointIO` and the DeepSpeed
strategy rename it from `.tmp`), and pruning counts only those, so an older checkpoint goes only when
`keep_last_n` newer complete ones exist: resume (`find_resume_checkpoint`) always has the newest.

Only what voxfm wrote is deleted: an entry named `stepNNNNNN.ckpt` that is a link, or that does not read as a
checkpoint of that step (a user's file, a damaged one reported at resume), is left where it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch.callbacks import Checkpoint

from voxfm.pretrain.training.checkpoints import PERIODIC, load_checkpoint


def to_prune(steps: list[int], keep_last_n: int | None, keep_every_n_steps: int | None) -> set[int]:
    """The periodic checkpoints' steps → those to delete. Milestones count among the newest `keep_last_n`."""
    if keep_last_n is None:
        return set()
    kept = set(sorted(steps)[-keep_last_n:])
    if keep_every_n_steps:
        kept |= {s for s in steps if s % keep_every_n_steps == 0}
    return set(steps) - kept


def prune_checkpoints(checkpoint_dir: Path, keep_last_n: int | None, keep_every_n_steps: int | None) -> list[Path]:
    """Deletes the periodic checkpoints (files, or DeepSpeed folders and their `.universal` conversions) that
    retention does not keep; → the deleted paths."""
    periodic = {
        int(m.group(1)): p
        for p in checkpoint_dir.glob("step*.ckpt")
        if (m := PERIODIC.fullmatch(p.name)) and not p.is_symlink() and _is_checkpoint_of(p, int(m.group(1)))
    }
    deleted = []
    for step in sorted(to_prune(list(periodic), keep_last_n, keep_every_n_steps)):
        path = periodic[step]
        for target in (path, path.with_name(path.name + ".universal")):
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        deleted.append(path)
    return deleted


def _is_checkpoint_of(path: Path, step: int) -> bool:
    """Whether `path` reads as a voxfm checkpoint of `step` (its metadata only: tensors are mapped, not read)."""
    try:
        ckpt = load_checkpoint(path, mmap=True)
    except Exception:
        return False
    return isinstance(ckpt, dict) and ckpt.get("global_step") == step and "voxfm_config" in ckpt


class Retention(Checkpoint):
    """Prunes on rank 0 after each save. A `Checkpoint` subclass so that Lightning runs it after the
    `ModelCheckpoint` listed before it (it moves checkpoint callbacks to the end, in order) and after
    `FinalCheckpoint` at the end of training."""

    def __init__(
        self, checkpoint_dir: Path, keep_last_n: int | None, keep_every_n_steps: int | None, every_n_steps: int
    ):
        self.dir, self.keep_last_n, self.keep_every_n_steps = Path(checkpoint_dir), keep_last_n, keep_every_n_steps
        self.every_n_steps, self._pruned_at = every_n_steps, -1

    def _prune(self, trainer) -> None:
        if trainer.is_global_zero and self.dir.is_dir() and trainer.global_step != self._pruned_at:
            prune_checkpoints(self.dir, self.keep_last_n, self.keep_every_n_steps)
            self._pruned_at = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every_n_steps == 0:
            self._prune(trainer)

    def on_train_end(self, trainer, pl_module):
        self._pruned_at = -1  # FinalCheckpoint may have just written this step
        self._prune(trainer)
