"""The teacher: an exponential moving average of the student, its momentum on a cosine from m0 to 1."""

from __future__ import annotations

import math

import torch


def teacher_momentum(step: int, total_steps: int, start: float = 0.992, end: float = 1.0) -> float:
    """Cosine from `start` (step 0) to `end` (step `total_steps`)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """teacher ← m · teacher + (1 − m) · student, in place, for matching lists of tensors."""
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} tensors, student {len(student)}")
    scaled = torch._foreach_mul(student, 1 - momentum)  # rounded as the formula reads (no fused multiply-add)
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, scaled)
