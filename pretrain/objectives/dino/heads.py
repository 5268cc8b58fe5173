"""The DINO head (on the class token) and the iBOT head (on patch tokens) share one design: a 3-layer MLP to a
bottleneck, L2-normalised, then a weight-normalised linear layer to K prototypes whose norms are fixed at 1. The
fixed norms bound the logits, which is what keeps the teacher from collapsing to a one-hot output (DINO, sec. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

NORMALISE_EPS = 1e-6  # F.normalize's default 1e-12 underflows in bf16/fp16 and gives NaNs


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers={n_layers}: expected >= 1")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)  # every prototype's norm: 1, fixed
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_dim] → prototype logits [..., out_dim]."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, eps=NORMALISE_EPS))
