"""Masked autoencoding (He et al. 2022) for 3D volumes: reconstruct hidden patches from visible ones."""

from __future__ import annotations

import torch
from torch import nn

from models.mae_decoder import MAEDecoder


def patchify(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """x: [B, C, D, H, W] → [B, N, p0*p1*p2*C], patches in the same raster order as the Conv3d tokens."""
    b, c, d, h, w = x.shape
    p0, p1, p2 = patch_size
    x = x.reshape(b, c, d // p0, p0, h // p1, p1, w // p2, p2)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (d // p0) * (h // p1) * (w // p2), p0 * p1 * p2 * c)


class MAEObjective(nn.Module):
    """batch {"image": [B, C, D, H, W], "mask": [B, N] bool, True = hidden} + ViT → (loss, logs).

    The loss is the mean squared error on hidden patches only; with `norm_pix_loss` each target
    patch is standardised by its own mean and variance (MAE's best setting).
    """

    def __init__(self, encoder_hidden: int, in_channels: int, patch_size, grid, decoder_hidden: int = 384,
                 decoder_layers: int = 4, decoder_heads: int = 12, norm_pix_loss: bool = True):
        super().__init__()
        self.patch_size = tuple(patch_size) if not isinstance(patch_size, int) else (patch_size,) * 3
        patch_voxels = in_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.decoder = MAEDecoder(encoder_hidden, tuple(grid), patch_voxels, decoder_hidden, decoder_layers,
                                  decoder_heads)
        self.norm_pix_loss = norm_pix_loss

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        x, mask = batch["image"], batch["mask"]
        tokens = backbone.embed(x)  # [B, N, C]
        b, n, c = tokens.shape
        visible = tokens[~mask].reshape(b, -1, c)
        pred = self.decoder(backbone.encode(visible), mask).float()  # [B, N, P]
        target = patchify(x.float(), self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(dim=-1)  # [B, N]
        loss = (per_patch * mask).sum() / mask.sum()
        logs = {"loss": loss.detach(), "visible_loss": ((per_patch * ~mask).sum() / (~mask).sum()).detach()}
        return loss, logs
