"""KoLeo (Sablayrolles et al. 2019; DINOv2): −mean log of each L2-normalised feature's distance to its nearest
neighbour in the batch, which spreads the class tokens over the sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from voxfm.pretrain.objectives.dino.heads import NORMALISE_EPS


def koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x: [n, d] (n ≥ 2) → scalar."""
    x = F.normalize(x.float(), dim=-1, eps=NORMALISE_EPS)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)  # never oneself
        nearest = similarity.argmax(dim=1)
    distance = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(distance + eps).mean()
