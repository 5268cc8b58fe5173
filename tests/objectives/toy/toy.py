"""A toy objective, the way a user adds one: this module and `conf/objective/toy.yaml`, no other file.

It regresses each view's mean intensity from the backbone's pooled features: nothing worth pretraining for, but
it walks every path an objective walks (declaration, config checks, the step, checkpoints, export).
"""

from __future__ import annotations

import torch
from torch import nn

from voxfm.models.spec import BackboneSpec
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration


class ToyObjective(nn.Module):
    """batch {"image": [B, C, X, Y, Z]} + any backbone with `pooled` → (loss, logs)."""

    declaration = ObjectiveDeclaration(backbone="any", views=1, bounds={"width": {"ge": 1}})

    def __init__(self, spec: BackboneSpec, width: int = 16):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(spec.feature_dim, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        target = batch["image"].float().mean(dim=(1, 2, 3, 4))
        loss = (self.head(backbone.pooled(batch["image"])).squeeze(1).float() - target).pow(2).mean()
        return loss, {"loss": loss.detach()}
