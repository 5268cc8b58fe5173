"""The teacher's targets: softmax with a running centre (DINO) or Sinkhorn-Knopp (DINOv2), both over the global
batch (all-reduced across ranks: N GPUs equal one GPU with the global batch), and the teacher temperature warm-up."""

from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.training.distributed import world


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(x)
    return x


def teacher_temperature(step: int, start: float = 0.04, end: float = 0.07, warmup_steps: int = 0) -> float:
    """Linear warm-up from `start` to `end` over `warmup_steps`, then `end`."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@torch.no_grad()
def centred_softmax(teacher_logits: torch.Tensor, centre: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B, K] → softmax((logits − centre) / temperature) [B, K]."""
    return torch.softmax((teacher_logits.float() - centre) / temperature, dim=-1)


@torch.no_grad()
def updated_centre(centre: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """m · centre + (1 − m) · mean of the teacher's logits over the global batch → [1, K]."""
    total = _all_reduce(teacher_logits.float().sum(dim=0, keepdim=True))
    count = _all_reduce(torch.tensor([teacher_logits.shape[0]], device=teacher_logits.device, dtype=torch.float32))
    return centre * momentum + total / count * (1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """[B, K] → assignments [B, K]: each sample's row sums to 1 and each prototype receives an equal share of the
    global batch, B_total / K (DINOv2's SinkhornKnopp teacher, with sums all-reduced across ranks)."""
    scaled = teacher_logits.float() / temperature
    top = scaled.max()
    if world()[1] > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(scaled - top).T  # [K, B]; the global max cancels in the first normalisation (no overflow)
    b_total = _all_reduce(torch.tensor([q.shape[1]], device=q.device, dtype=torch.float32))
    k = q.shape[0]
    q /= _all_reduce(q.sum())
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # every prototype: mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # every sample: mass 1/B_total
        q /= b_total
    return (q * b_total).T
