"""SimCLR (Chen et al. 2020) for 3D volumes: two views of one region attract, every other view repels.

Negatives are gathered across all ranks *with gradients* (MONAI's and VoCo's losses use only the local
batch); anchors are the local views, so each rank's loss is the mean over its own anchors and DDP's
gradient average gives exactly the single-process loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voxfm.models.heads import ProjectionHead
from voxfm.models.spec import BackboneSpec
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration
from voxfm.pretrain.runtime.distributed import gather_with_grad, world


def nt_xent(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z: [2b, d] local embeddings, view-major (row i and row b + i are the two views of sample i).
    → (NT-Xent loss averaged over local anchors, top-1 accuracy of finding the positive)."""
    n = z.shape[0]
    if n % 2:
        raise ValueError(f"nt_xent expects an even number of views (2 per sample), got {n}")
    b = n // 2
    z = F.normalize(z.float(), dim=-1)
    everything = gather_with_grad(z)  # [world * 2b, d], rank-major
    rank, _ = world()
    logits = z @ everything.T / temperature  # [2b, world * 2b]
    rows = torch.arange(n, device=z.device)
    own = rank * n + rows
    columns = torch.arange(everything.shape[0], device=z.device)
    logits = logits.masked_fill(columns[None, :] == own[:, None], float("-inf"))  # not oneself (no host sync)
    positive = rank * n + (rows + b) % n
    loss = F.cross_entropy(logits, positive)
    accuracy = (logits.argmax(dim=1) == positive).float().mean()
    return loss, accuracy.detach()


class SimCLRObjective(nn.Module):
    """batch {"image": [2B, C, X, Y, Z] (two views, view-major), "n_views": 2} + backbone → (loss, logs).
    Works with any backbone that has `pooled(x) -> [B, feature_dim]` (ViT: mean token; ResEnc: mean bottleneck)."""

    declaration = ObjectiveDeclaration(  # a UNet backbone's decoder is frozen (see `build_module`)
        backbone="any",
        views=2,
        trains_decoder=False,
        bounds={"proj_hidden": {"ge": 1}, "proj_dim": {"ge": 1}, "temperature": {"gt": 0.0}},
    )

    def __init__(self, spec: BackboneSpec, proj_hidden: int = 2048, proj_dim: int = 128, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"objective.loss.temperature={temperature}: expected > 0")
        self.head = ProjectionHead(spec.feature_dim, proj_hidden, proj_dim)
        self.temperature = temperature

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        if batch.get("n_views", 2) != self.declaration.views:
            raise ValueError("objective=simclr needs two views per region: set objective.views.n_views=2")
        z = self.head(backbone.pooled(batch["image"]))
        loss, accuracy = nt_xent(z, self.temperature)
        return loss, {"loss": loss.detach(), "contrastive_acc": accuracy}
