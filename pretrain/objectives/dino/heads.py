"""The DINO head (on the class token) and the iBOT head (on patch tokens) share one design: a 3-layer MLP to a
bottleneck, L2-normalised, then a weight-normalised linear layer to K prototypes whose norms are fixed at 1. The
fixed norms bound the logits, which is what keeps the teacher from collapsing to a one-hot output (DINO, sec. 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMALISE_EPS = 1e-6  # F.normalize's default 1e-12 underflows in bf16/fp16 and gives NaNs


class Prototypes(nn.Module):
    """The last layer: K prototype vectors, each normalised to length 1 in the forward — DINO's weight-normalised
    linear layer with its norms fixed at 1, written out (a parametrised module cannot be pickled, and
    `strategy=ddp_spawn` pickles the model). Parameter `weight` [K, bottleneck]: only its directions matter."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1, eps=NORMALISE_EPS))


class DINOHead(nn.Module):
    def __init__(
        self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3
    ):
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
        self.last_layer = Prototypes(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_dim] → prototype logits [..., out_dim]."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, eps=NORMALISE_EPS))
