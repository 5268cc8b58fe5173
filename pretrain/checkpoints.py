"""Finding and safely reading checkpoints (plain tensors and containers only: no arbitrary unpickling)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def find_resume_checkpoint(checkpoint_dir: Path) -> tuple[Path | None, int]:
    """→ (checkpoint to resume from, its global step), or (None, 0) for a fresh run.

    `last.ckpt` first; if it cannot be read, the newest periodic checkpoint that can.
    """
    if not checkpoint_dir.is_dir():
        return None, 0
    periodic = sorted(checkpoint_dir.glob("step*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in [checkpoint_dir / "last.ckpt", *periodic]:
        if not path.exists():
            continue
        try:
            return path, int(load_checkpoint(path)["global_step"])
        except Exception as err:  # a damaged file: say so and fall back to an older one
            print(f"voxfm: cannot read {path} ({type(err).__name__}: {err}); trying an older checkpoint")
    return None, 0
