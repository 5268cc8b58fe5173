"""The two distillation losses: DINO's on the class token of every crop (against the teacher's global crops), and
iBOT's on the student's masked patch tokens (against the teacher's tokens at the same positions)."""

from __future__ import annotations

import torch

from voxfm.pretrain.objectives.dino.targets import all_reduced
from voxfm.pretrain.runtime.distributed import world


def dino_loss(
    student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temperature: float = 0.1
) -> torch.Tensor:
    """student_logits: one [B, K] per crop (global crops first, then local); teacher_probs: one [B, K] per global
    crop → the mean over every (teacher crop, student crop) pair of different crops of the cross-entropy
    −Σ p_teacher · log softmax(student / τ_s), averaged over the batch."""
    total, pairs = 0.0, 0
    for s, student in enumerate(student_logits):
        log_p = torch.log_softmax(student.float() / student_temperature, dim=-1)
        for t, teacher in enumerate(teacher_probs):
            if s == t:  # a global crop is not its own target
                continue
            total = total + (-(teacher * log_p).sum(dim=-1)).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("dino_loss needs at least two crops (two globals, or a global and a local)")
    return total / pairs


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    masks: torch.Tensor,
    student_temperature: float = 0.1,
    n_images: int | None = None,
) -> torch.Tensor:
    """student_logits, teacher_probs: [B, N, K] patch tokens; masks: bool [B, N], True = hidden from the student;
    n_images: the global crops these rows were picked from (default B; unmasked crops count, as in DINOv2 and iBOT)
    → the cross-entropy on hidden tokens only, averaged within each image, summed, divided by the global batch's
    crops. Across ranks that count is all-reduced and each rank's sum scaled by the world size, so the ranks' mean
    (DDP's gradient average) is the one-process loss."""
    per_token = -(teacher_probs * torch.log_softmax(student_logits.float() / student_temperature, dim=-1)).sum(-1)
    weights = masks.float()
    per_image = (per_token * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    count = torch.tensor([float(masks.shape[0] if n_images is None else n_images)], device=masks.device)
    return per_image.sum() * world()[1] / all_reduced(count)[0]
