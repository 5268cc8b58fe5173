"""The teacher: an exponential moving average of the student, its momentum on a cosine from m0 to 1."""

from __future__ import annotations

import math

import torch
from torch import nn


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


class FP32Teacher(nn.Module):
    """fp32 copies of the teacher's parameters as buffers `t0`, `t1`, ... (the teacher's parameter order), for runs
    whose weights are half precision: DeepSpeed's bf16/fp16 casts every parameter of the module it wraps and leaves
    buffers alone, and an EMA step (1 − m)·(s − t) — about 1e-4 of a weight at m = 0.992 — is below bf16's
    resolution (~4e-3 of it): a bf16 teacher would hardly move. The EMA runs on these copies, the teacher's
    half-precision parameters are set from them, and the export reads them. Made only for such runs (DDP keeps
    fp32 parameters under autocast), so nothing is doubled or broadcast otherwise."""

    def __init__(self, teacher: list[torch.Tensor]):
        super().__init__()
        self.n = len(teacher)
        for i, t in enumerate(teacher):
            self.register_buffer(f"t{i}", t.detach().float().clone())

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f"t{i}") for i in range(self.n)]

    @torch.no_grad()
    def update(self, teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
        """masters ← m · masters + (1 − m) · student (in fp32), then teacher ← masters (rounded to its dtype)."""
        ema_update(self.tensors(), [s.float() for s in student], momentum)
        torch._foreach_copy_(teacher, self.tensors())
