"""`AtomicCheckpointIO`: the Lightning checkpoint IO plugin every voxfm trainer uses (pretraining and
fine-tuning), writing each checkpoint atomically."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from voxfm.pretrain.errors import CheckpointWriteError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<path>.tmp` then renames: a crash or a full disk mid-write never leaves a truncated checkpoint,
    and the previous one stays what resume finds."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            get_filesystem(path).makedirs(str(path.parent), exist_ok=True)
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
            tmp.unlink(missing_ok=True)
            kept = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
            raise CheckpointWriteError(
                f"cannot write checkpoint {path} ({type(err).__name__}: {err}). Earlier checkpoints are intact "
                f"({', '.join(kept) or 'none yet'}): free space or fix permissions, then rerun to resume"
            ) from err
