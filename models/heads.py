"""Projection heads for contrastive objectives."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Linear → LayerNorm → GELU → Linear (SimCLR's MLP head). LayerNorm, not BatchNorm: a sample's
    embedding must not depend on the rest of its rank's batch, or losses differ across world sizes."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_dim] → [B, out_dim]."""
        return self.net(x)
