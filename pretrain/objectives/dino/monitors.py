"""Collapse monitors (DINOv2-3D-Med's): how evenly the teacher uses its prototypes, how many directions the class
tokens span, and how alike the class tokens are — device tensors, read at logging steps only. Thresholds: entropy
< 0.1 warns (0.7–1.0 is healthy); effective rank < 10 is a soft collapse, < 2 a hard one; a Gram off-diagonal mean
≥ 0.995 with std ≤ 0.01 is saturated. Beside them, one dense-feature monitor: how alike far-apart patch tokens are
(`far_patch_similarity`), what Gram anchoring (`gram.py`) is there to hold down."""

from __future__ import annotations

import itertools
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
    """[n, d] → (mean, std) of the cosine similarities between different rows. Weighted by an off-diagonal mask,
    not indexed by it: a boolean index has a data-dependent shape, a graph break under trainer.compile."""
    x = F.normalize(features.float(), dim=-1, eps=NORMALISE_EPS)
    gram = x @ x.T
    off = 1.0 - torch.eye(gram.shape[0], device=gram.device)
    count = gram.shape[0] * (gram.shape[0] - 1)
    mean = (gram * off).sum() / count
    return mean, (((gram - mean) * off).square().sum() / (count - 1)).sqrt()  # unbiased, as Tensor.std


@torch.no_grad()
def far_patch_similarity(
    patches: torch.Tensor, grid: tuple[int, ...], visible: torch.Tensor | None = None, distance: float = 2.0
) -> torch.Tensor:
    """patches [B, N, D] on a token grid (N = prod(grid), flattened row-major as the patch embedding flattens it),
    visible [B, N] bool (None: all) → the mean cosine similarity between visible patches of the same image at least
    `distance` tokens apart (Euclidean; 2 leaves out the 26 neighbours). Neighbours are alike in any healthy feature
    map; far patches growing alike (towards 1) means the dense features are blurring into one global feature, the
    degradation DINOv3 found in long runs. Computed without an N×N matrix (N is thousands for 3D crops): the sum
    over all pairs, ||Σ x_i||², less the pairs closer than `distance`, one shifted product per offset."""
    b, n, d = patches.shape
    v = torch.ones(b, n, device=patches.device) if visible is None else visible.float()
    x = F.normalize(patches.float(), dim=-1, eps=NORMALISE_EPS) * v[..., None]
    total, count = x.sum(dim=1).square().sum(), v.sum(dim=1).square().sum()  # ordered pairs, i = j included
    cube, mask = x.transpose(1, 2).reshape(b, d, *grid), v.reshape(b, *grid)
    reach = math.ceil(distance) - 1
    for offset in itertools.product(range(-reach, reach + 1), repeat=len(grid)):
        if math.hypot(*offset) >= distance:
            continue
        to = tuple(slice(max(0, k), g + min(0, k)) for k, g in zip(offset, grid))  # i + offset for ...
        at = tuple(slice(max(0, -k), g - max(0, k)) for k, g in zip(offset, grid))  # ... every i that has one
        total = total - (cube[(..., *to)] * cube[(..., *at)]).sum()
        count = count - (mask[(slice(None), *to)] * mask[(slice(None), *at)]).sum()
    return total / count.clamp_min(1)
