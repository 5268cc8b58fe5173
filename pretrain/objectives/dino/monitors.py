"""Collapse monitors (DINOv2-3D-Med's): how evenly the teacher uses its prototypes, how many directions the class
tokens span, and how alike the class tokens are — device tensors, read at logging steps only. Thresholds: entropy
< 0.1 warns (0.7–1.0 is healthy); effective rank < 10 is a soft collapse, < 2 a hard one; a Gram off-diagonal mean
≥ 0.995 with std ≤ 0.01 is saturated."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from voxfm.pretrain.objectives.dino.heads import NORMALISE_EPS


@torch.no_grad()
def normalised_entropy(teacher_probs: torch.Tensor) -> torch.Tensor:
    """[B, K] probabilities → entropy of their batch mean / log K, in [0, 1]: 0 when every sample picks the same
    prototype, 1 when the batch uses all prototypes evenly."""
    mean = teacher_probs.float().mean(dim=0)
    return -(mean * torch.log(mean.clamp_min(1e-12))).sum() / math.log(teacher_probs.shape[-1])


@torch.no_grad()
def teacher_information(teacher_probs: torch.Tensor) -> torch.Tensor:
    """[B, K] → (entropy of the batch mean − mean entropy of each sample) / log K, in [0, 1]: the information the
    teacher's output carries about its input. 0 when every input gets the same distribution — the collapse that
    the marginal entropy alone misses when that one distribution is spread out."""
    p = teacher_probs.float()
    mean = p.mean(dim=0)
    marginal = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
    each = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1).mean()
    return (marginal - each) / math.log(p.shape[-1])


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> torch.Tensor:
    """[n, d] → exp(entropy of the normalised singular values) (Roy & Vetterli 2007), in [1, min(n, d)]."""
    singular = torch.linalg.svdvals(features.float() - features.float().mean(dim=0))
    p = singular / singular.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


@torch.no_grad()
def gram_off_diagonal(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] → (mean, std) of the cosine similarities between different rows."""
    x = F.normalize(features.float(), dim=-1, eps=NORMALISE_EPS)
    gram = x @ x.T
    off = gram[~torch.eye(gram.shape[0], dtype=torch.bool, device=gram.device)]
    return off.mean(), off.std()
