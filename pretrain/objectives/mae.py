"""Masked autoencoding (He et al. 2022) for 3D volumes: reconstruct hidden patches from visible ones."""

from __future__ import annotations

import torch
from torch import nn

from models.mae_decoder import MAEDecoder
from models.spec import BackboneSpec


def patchify(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """x: [B, C, D, H, W] → [B, N, p0*p1*p2*C], patches in the same raster order as the Conv3d tokens."""
    b, c, d, h, w = x.shape
    p0, p1, p2 = patch_size
    x = x.reshape(b, c, d // p0, p0, h // p1, p1, w // p2, p2)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (d // p0) * (h // p1) * (w // p2), p0 * p1 * p2 * c)


def unpatchify(patches: torch.Tensor, patch_size: tuple[int, int, int], grid: tuple[int, int, int],
               channels: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, N, p0*p1*p2*C] → [B, C, D, H, W]."""
    b = patches.shape[0]
    (p0, p1, p2), (g0, g1, g2) = patch_size, grid
    x = patches.reshape(b, g0, g1, g2, p0, p1, p2, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, g0 * p0, g1 * p1, g2 * p2)


def visible_ids(mask: torch.Tensor, n_visible: int) -> torch.Tensor:
    """mask: [B, N] bool, True = hidden, `n_visible` False per row → ids_keep [B, n_visible] in raster order."""
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_visible]


def n_visible_of(batch: dict) -> int:
    """The device stage records the count (a Python int); a hand-made batch pays one host sync."""
    if "n_visible" in batch:
        return int(batch["n_visible"])
    return int((~batch["mask"][0]).sum())


class MAEObjective(nn.Module):
    """batch {"image": [B, C, D, H, W], "mask": [B, N] bool, True = hidden} + ViT → (loss, logs).

    The loss is the mean squared error on hidden patches only; with `norm_pix_loss` each target
    patch is standardised by its own mean and variance (MAE's best setting).
    """

    def __init__(self, spec: BackboneSpec, decoder_hidden: int = 384, decoder_layers: int = 4,
                 decoder_heads: int = 12, norm_pix_loss: bool = True):
        super().__init__()
        if spec.patch_size is None or spec.grid is None:
            raise ValueError("objective=mae needs a ViT backbone (patch tokens); use objective=mim for CNNs")
        self.patch_size, self.grid, self.in_channels = spec.patch_size, spec.grid, spec.in_channels
        patch_voxels = spec.in_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.decoder = MAEDecoder(spec.feature_dim, spec.grid, patch_voxels, decoder_hidden, decoder_layers,
                                  decoder_heads)
        self.norm_pix_loss = norm_pix_loss

    def encode_visible(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """→ latent [B, n_visible, C] of the visible tokens and their positions ids_keep [B, n_visible]."""
        ids_keep = visible_ids(batch["mask"], n_visible_of(batch))
        return backbone.encode(backbone.embed(batch["image"], ids_keep)), ids_keep  # only visible patches embedded

    def _target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target = patchify(x.float(), self.patch_size)
        if not self.norm_pix_loss:
            return target, torch.zeros_like(target[..., :1]), torch.ones_like(target[..., :1])
        mean, std = target.mean(dim=-1, keepdim=True), (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return (target - mean) / std, mean, std

    def reconstruction_loss(self, batch: dict, latent: torch.Tensor, ids_keep: torch.Tensor):
        """→ (loss, logs, pred [B, N, P] in the target's (normalised) space)."""
        mask = batch["mask"]
        pred = self.decoder(latent, ids_keep).float()
        target, _, _ = self._target(batch["image"])
        per_patch = (pred - target).pow(2).mean(dim=-1)  # [B, N]
        hidden = mask.float()
        loss = (per_patch * hidden).sum() / hidden.sum()
        visible_loss = (per_patch * (1 - hidden)).sum() / (1 - hidden).sum()
        return loss, {"loss": loss.detach(), "visible_loss": visible_loss.detach()}, pred

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        latent, ids_keep = self.encode_visible(batch, backbone)
        loss, logs, _ = self.reconstruction_loss(batch, latent, ids_keep)
        return loss, logs

    @torch.no_grad()
    def reconstruct(self, batch: dict, backbone: nn.Module) -> dict[str, torch.Tensor]:
        """→ {"original", "masked", "reconstruction"}: [B, C, D, H, W] each, for pictures. Hidden patches of
        the reconstruction are the prediction (de-standardised with the true patch statistics, as MAE shows
        them); visible ones are the input."""
        x = batch["image"].float()
        latent, ids_keep = self.encode_visible(batch, backbone)
        pred = self.decoder(latent, ids_keep).float()
        _, mean, std = self._target(x)
        hidden = batch["mask"].unsqueeze(-1).float()
        patches = patchify(x, self.patch_size)
        recon = patches * (1 - hidden) + (pred * std + mean) * hidden
        shape = (self.patch_size, self.grid, self.in_channels)
        return {"original": x, "masked": unpatchify(patches * (1 - hidden), *shape),
                "reconstruction": unpatchify(recon, *shape)}
