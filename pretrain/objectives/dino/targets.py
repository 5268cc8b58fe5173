"""The teacher's targets: softmax with a running centre (DINO) or Sinkhorn-Knopp (DINOv2), both over the global
batch (all-reduced across ranks: N GPUs equal one GPU with the global batch), and the teacher temperature warm-up."""

from __future__ import annotations

import torch
import torch.distributed as dist

from voxfm.pretrain.runtime.distributed import world


def all_reduced(x: torch.Tensor) -> torch.Tensor:
    """x summed over the ranks, in place (x itself with one process)."""
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
def updated_centre(
    centre: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """m · centre + (1 − m) · mean of the teacher's logits over the global batch → [1, K]. teacher_logits: [..., K];
    valid: bool [...] (None: all rows), the rows that count (iBOT's hidden tokens, padded to a static shape)."""
    logits = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
    weights = torch.ones(logits.shape[0], device=logits.device) if valid is None else valid.reshape(-1).float()
    total = all_reduced((logits * weights[:, None]).sum(dim=0, keepdim=True))
    count = all_reduced(weights.sum().reshape(1))
    return centre * momentum + total / count.clamp_min(1.0) * (1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor, temperature: float, iterations: int = 3, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """[..., K] → assignments [..., K]: each sample's row sums to 1 and each prototype receives an equal share of
    the global batch, B_total / K (DINOv2's SinkhornKnopp teacher, with sums all-reduced across ranks). valid: bool
    [...] (None: all rows): the rows that take part; the others come out as zeros."""
    shape = teacher_logits.shape
    scaled = teacher_logits.float().reshape(-1, shape[-1]) / temperature
    weights = torch.ones(scaled.shape[0], device=scaled.device) if valid is None else valid.reshape(-1).float()
    top = scaled.max()
    if world()[1] > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = (torch.exp(scaled - top) * weights[:, None]).T  # [K, B]; the global max cancels in the first normalisation
    b_total = all_reduced(weights.sum().reshape(1))
    k = q.shape[0]
    q /= all_reduced(q.sum()).clamp_min(1e-30)
    for _ in range(iterations):
        q /= all_reduced(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)  # every prototype: mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)  # every sample: mass 1/B_total
        q /= b_total
    return (q * b_total).T.reshape(shape)
