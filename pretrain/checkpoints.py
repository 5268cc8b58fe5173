"""Finding and safely reading checkpoints (plain tensors and containers only: no arbitrary unpickling)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

PERIODIC = re.compile(r"step(\d+)\.ckpt")


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """`mmap=True` maps the tensors instead of reading them: cheap when only metadata is needed."""
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


def _readable_step(path: Path) -> int | None:
    """The checkpoint's global step, without reading its (possibly GB-sized) tensors; None if damaged."""
    try:
        return int(load_checkpoint(path, mmap=True)["global_step"])
    except Exception as err:  # a damaged file: say so and fall back to an older one
        print(f"voxfm: cannot read {path} ({type(err).__name__}: {err}); trying an older checkpoint")
        return None


def find_resume_checkpoint(checkpoint_dir: Path) -> tuple[Path | None, int]:
    """→ (checkpoint to resume from, its global step), or (None, 0) for a fresh run.

    The newest readable checkpoint wins: a crash between writing `stepN.ckpt` and refreshing
    `last.ckpt` leaves the periodic one newer, and a damaged file falls back to the next newest.
    """
    if not checkpoint_dir.is_dir():
        return None, 0
    candidates: list[tuple[int, int, Path]] = []  # (step, prefer last.ckpt on ties, path)
    last = checkpoint_dir / "last.ckpt"
    if last.exists() and (step := _readable_step(last)) is not None:
        candidates.append((step, 1, last))
    for path in checkpoint_dir.glob("step*.ckpt"):
        if match := PERIODIC.fullmatch(path.name):
            candidates.append((int(match.group(1)), 0, path))
    for step, is_last, path in sorted(candidates, reverse=True):
        if is_last or _readable_step(path) is not None:
            return path, step
    return None, 0
