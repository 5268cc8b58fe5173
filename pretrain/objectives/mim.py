"""Sparse masked image modelling for CNNs (Spark, Tian et al. 2023; Spark3D as nnssl runs it on ResEnc UNets).

Random cubes of the input are hidden. The encoder runs as if its convolutions were sparse: hidden cells
are zeroed after the stem and after every residual block (`ResEncUNet.encode(x, visible)`), so no
feature of a visible cell is computed from a hidden voxel. Before decoding, hidden cells of every skip
are filled with a learned per-stage mask token ("densifying"), the UNet decoder reconstructs the
volume, and the loss is the mean squared error over hidden voxels only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voxfm.models.spec import BackboneSpec
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration


def cube_visibility(mask: torch.Tensor, spatial: tuple[int, int, int]) -> torch.Tensor:
    """mask: [B, N] bool over a raster grid of cubes, True = hidden → visible [B, 1, *spatial] float, 1 = visible.
    The grid is inferred from N and `spatial` (cubic cells)."""
    b, n = mask.shape
    cube = round((spatial[0] * spatial[1] * spatial[2] / n) ** (1 / 3))
    grid = tuple(s // cube for s in spatial)
    if grid[0] * grid[1] * grid[2] != n:
        raise ValueError(f"a mask of {n} cells does not tile a crop of {list(spatial)} with cubes")
    hidden = mask.view(b, 1, *grid).float()
    return 1.0 - F.interpolate(hidden, size=spatial, mode="nearest")


class MIMObjective(nn.Module):
    """batch {"image": [B, C, X, Y, Z], "mask": [B, N] bool over cubes, True = hidden} + ResEncUNet → (loss, logs)."""

    declaration = ObjectiveDeclaration(backbone="cnn", views=None, masks=True, reconstructs=True)

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        if spec.stage_channels is None:
            raise ValueError("objective=mim needs a CNN backbone with encoder stages (model=resenc_*)")
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1, 1)) for c in spec.stage_channels)
        for token in self.mask_tokens:
            nn.init.normal_(token, std=0.02)

    def predict(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (reconstruction [B, C, X, Y, Z], visible [B, 1, X, Y, Z])."""
        x = batch["image"]
        visible = cube_visibility(batch["mask"], tuple(x.shape[2:])).to(x.dtype)
        skips = backbone.encode(x, visible)
        dense = []
        for skip, token in zip(skips, self.mask_tokens):
            keep = -F.adaptive_max_pool3d(-visible, skip.shape[2:])  # 1 where the whole cell is visible
            keep = keep.to(skip.dtype)  # 0/1, exact: the autocast stream keeps its dtype
            dense.append(skip * keep + token.to(skip.dtype) * (1 - keep))
        return backbone.decode(dense), visible

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        pred, visible = self.predict(batch, backbone)
        error = (pred.float() - batch["image"].float()).pow(2).mean(dim=1, keepdim=True)  # [B, 1, X, Y, Z]
        hidden = 1.0 - visible.float()
        loss = (error * hidden).sum() / hidden.sum()
        logs = {"loss": loss.detach()}
        if batch.get("log_step", True):  # a diagnostic, on logging steps alone (a Python bool; absent = True)
            logs["visible_loss"] = (error.detach() * visible).sum() / visible.sum()
        return loss, logs

    @torch.no_grad()
    def reconstruct(self, batch: dict, backbone: nn.Module) -> dict[str, torch.Tensor]:
        """→ {"original", "masked", "reconstruction"}: [B, C, X, Y, Z]; hidden cubes show the prediction."""
        x = batch["image"].float()
        pred, visible = self.predict(batch, backbone)
        visible = visible.float()
        return {"original": x, "masked": x * visible, "reconstruction": x * visible + pred.float() * (1 - visible)}
