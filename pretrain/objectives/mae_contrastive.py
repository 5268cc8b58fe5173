"""MAE on each of two views plus a contrastive term between their pooled visible-token features
(the SSL3D 2025 winning family). Reuses `MAEObjective` and `nt_xent`; one encoder pass serves both."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from voxfm.models.heads import ProjectionHead
from voxfm.models.spec import BackboneSpec
from voxfm.pretrain.objectives.mae import MAEObjective
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration
from voxfm.pretrain.objectives.simclr import nt_xent


class MAEContrastiveObjective(nn.Module):
    """batch {"image": [2B, ...] two masked views (view-major), "mask": [2B, N]} + ViT → (loss, logs).
    loss = mae_weight * MAE(both views) + contrastive_weight * NT-Xent(head(mean visible latent))."""

    declaration = ObjectiveDeclaration(
        backbone="tokens",
        views=2,
        masks=True,
        mask_cell_is_token=True,
        reconstructs=True,
        bounds={
            "mae_weight": {"ge": 0.0},
            "contrastive_weight": {"ge": 0.0},
            "proj_hidden": {"ge": 1},
            "proj_dim": {"ge": 1},
            "temperature": {"gt": 0.0},
        },
    )

    def __init__(
        self,
        spec: BackboneSpec,
        mae: Callable[[BackboneSpec], MAEObjective],
        mae_weight: float = 1.0,
        contrastive_weight: float = 0.1,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
    ):
        super().__init__()
        if mae_weight < 0 or contrastive_weight < 0 or mae_weight + contrastive_weight == 0:
            raise ValueError(
                f"objective.loss weights mae_weight={mae_weight}, contrastive_weight={contrastive_weight}:"
                " expected non-negative, not both zero"
            )
        self.mae = mae(spec)
        self.head = ProjectionHead(spec.feature_dim, proj_hidden, proj_dim)
        self.mae_weight, self.contrastive_weight, self.temperature = mae_weight, contrastive_weight, temperature

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        if batch.get("n_views", 2) != self.declaration.views:
            raise ValueError("objective=mae_contrastive needs two views per region: set objective.views.n_views=2")
        latent, ids = self.mae.encode_visible(batch, backbone)
        mae_loss, mae_logs = self.mae.reconstruction_loss(batch, latent, ids)
        contrastive, accuracy = nt_xent(self.head(latent.mean(dim=1)), self.temperature)
        loss = self.mae_weight * mae_loss + self.contrastive_weight * contrastive
        logs = {
            "loss": loss.detach(),
            "mae_loss": mae_logs["loss"],
            "contrastive_loss": contrastive.detach(),
            "contrastive_acc": accuracy,
        }
        if "visible_loss" in mae_logs:  # logging steps only (`MAEObjective.reconstruction_loss`)
            logs["visible_loss"] = mae_logs["visible_loss"]
        return loss, logs

    @property
    def decoder(self) -> nn.Module:
        """The MAE decoder (for benchmarks that build the same shapes elsewhere)."""
        return self.mae.decoder

    def repeated_blocks(self) -> list[nn.Module]:
        """The MAE decoder's blocks (`MAEObjective.repeated_blocks`)."""
        return self.mae.repeated_blocks()

    @torch.no_grad()
    def reconstruct(self, batch: dict, backbone: nn.Module) -> dict[str, torch.Tensor]:
        return self.mae.reconstruct(batch, backbone)
