"""`AtomicCheckpointIO`: the Lightning checkpoint IO plugin every voxfm trainer uses (pretraining and
fine-tuning), writing each checkpoint atomically: streamed by `torch.save` into `<name>.tmp` beside the target
(created exclusively, never through a link), synced, then renamed. Lightning's own atomic save serialises the
whole checkpoint into host memory first (one more copy of a 1.2 GB ViT-B checkpoint) and writes it through the
system temp folder, so a small /tmp failed every save under a message blaming run_dir."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from voxfm.data.ingest.safe_files import new_temp
from voxfm.pretrain.errors import CheckpointWriteError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<path>.tmp` then renames: a crash or a full disk mid-write never leaves a truncated checkpoint,
    and the previous one stays what resume finds."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp, fd = new_temp(path)
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
            tmp.unlink(missing_ok=True)
            kept = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
            raise CheckpointWriteError(
                f"cannot write checkpoint {path} ({type(err).__name__}: {err}). Earlier checkpoints are intact "
                f"({', '.join(kept) or 'none yet'}): free space or fix permissions, then rerun to resume"
            ) from err
