"""Masked autoencoding (He et al. 2022) for 3D volumes: reconstruct hidden patches from visible ones."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from voxfm.models.mae_decoder import MAEDecoder
from voxfm.models.spec import BackboneSpec
from voxfm.pretrain.objectives.protocol import ObjectiveDeclaration


def patchify(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """x: [B, C, X, Y, Z] → [B, N, p0*p1*p2*C], patches in the same raster order as the Conv3d tokens."""
    b, c, nx, ny, nz = x.shape
    p0, p1, p2 = patch_size
    x = x.reshape(b, c, nx // p0, p0, ny // p1, p1, nz // p2, p2)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (nx // p0) * (ny // p1) * (nz // p2), p0 * p1 * p2 * c)


def unpatchify(
    patches: torch.Tensor, patch_size: tuple[int, int, int], grid: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """Inverse of `patchify`: [B, N, p0*p1*p2*C] → [B, C, X, Y, Z]."""
    b = patches.shape[0]
    (p0, p1, p2), (g0, g1, g2) = patch_size, grid
    x = patches.reshape(b, g0, g1, g2, p0, p1, p2, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, g0 * p0, g1 * p1, g2 * p2)


def patches_at(x: torch.Tensor, patch_size: tuple[int, int, int], ids: torch.Tensor) -> torch.Tensor:
    """x: [B, C, X, Y, Z], ids: [B, n] raster positions → those patches, [B, n, p0, p1, p2, C] (a gather that a
    compiled consumer reads in place, along the volume's own contiguous rows)."""
    b, c, nx, ny, nz = x.shape
    p0, p1, p2 = patch_size
    grid = (nx // p0, ny // p1, nz // p2)
    view = x.reshape(b, c, grid[0], p0, grid[1], p1, grid[2], p2).permute(0, 2, 4, 6, 3, 5, 7, 1)  # no copy
    rows = torch.arange(b, device=x.device).unsqueeze(1)
    return view[rows, ids // (grid[1] * grid[2]), ids // grid[2] % grid[1], ids % grid[2]]


def patchify_at(x: torch.Tensor, patch_size: tuple[int, int, int], ids: torch.Tensor) -> torch.Tensor:
    """x: [B, C, X, Y, Z], ids: [B, n] raster positions → `patchify(x)` at those positions, [B, n, p0*p1*p2*C]:
    only those patches are copied out of the volume."""
    return patches_at(x, patch_size, ids).flatten(2)


def visible_then_hidden(mask: torch.Tensor) -> torch.Tensor:
    """mask: [B, N] bool, True = hidden → positions [B, N]: each row's visible ones, then its hidden ones, each
    in raster order. Every row hides the same count, so both parts have static shapes."""
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)


def visible_ids(mask: torch.Tensor, n_visible: int) -> torch.Tensor:
    """mask: [B, N] bool, True = hidden, `n_visible` False per row → ids_keep [B, n_visible] in raster order."""
    return visible_then_hidden(mask)[:, :n_visible]


def n_visible_of(batch: dict) -> int:
    """The view pipeline records the count (a Python int); a hand-made batch pays one host sync."""
    if "n_visible" in batch:
        return int(batch["n_visible"])
    return int((~batch["mask"][0]).sum())


def standardised(patches: torch.Tensor, dims: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """patches: [B, n, ...] fp32 → (each patch standardised by the mean and variance of its last `dims` dimensions,
    mean, std), the statistics keeping those dimensions as 1."""
    var, mean = torch.var_mean(patches, dim=tuple(range(-dims, 0)), keepdim=True)
    std = (var + 1e-6).sqrt()
    return (patches - mean) / std, mean, std


def patch_target(x: torch.Tensor, patch_size: tuple[int, int, int], ids: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """x: [B, C, X, Y, Z], ids: [B, n] → the fp32 target of those patches (standardised with `norm_pix`),
    [B, n, p0, p1, p2, C]: unflattened, so a compiled kernel reads each patch along the volume's contiguous rows
    (flattened, the CPU backend tiles across patches and writes the error out before reducing it)."""
    patches = patches_at(x, patch_size, ids).float()
    return standardised(patches, dims=4)[0] if norm_pix else patches


def squared_error(
    x: torch.Tensor, pred: torch.Tensor, ids: torch.Tensor, patch_size: tuple[int, int, int], norm_pix: bool
) -> torch.Tensor:
    """x: [B, C, X, Y, Z], pred: [B, n, P] at positions ids: [B, n] → the mean squared error against `patch_target`,
    in fp32 (a bf16 prediction is promoted inside the subtraction); the mean per patch, then over patches (all have
    as many voxels)."""
    target = patch_target(x, patch_size, ids, norm_pix)
    return (pred.float().view(target.shape) - target).pow(2).mean(dim=(-4, -3, -2, -1)).mean()


def patch_error(
    x: torch.Tensor, pred: torch.Tensor, ids: torch.Tensor, patch_size: tuple[int, int, int], norm_pix: bool
) -> torch.Tensor:
    """`squared_error`, recomputed in the backward (activation checkpointing): the backward reads the prediction and
    the image's patches again rather than a stored target or fp32 error (a compiled step keeps neither)."""
    if not (torch.is_grad_enabled() and pred.requires_grad):
        return squared_error(x, pred, ids, patch_size, norm_pix)
    # nothing random inside: no generator state to keep for the recomputation
    return checkpoint(squared_error, x, pred, ids, patch_size, norm_pix, use_reentrant=False, preserve_rng_state=False)


class MAEObjective(nn.Module):
    """batch {"image": [B, C, X, Y, Z], "mask": [B, N] bool, True = hidden} + ViT → (loss, logs).

    The loss is the mean squared error on hidden patches only; with `norm_pix_loss` each target
    patch is standardised by its own mean and variance (MAE's best setting). Every row hides the same
    number of patches (`data/views/masking.py`), so the hidden ones gather into static shapes.
    """

    declaration = ObjectiveDeclaration(
        backbone="tokens",
        views=None,
        masks=True,
        mask_cell_is_token=True,
        reconstructs=True,
        bounds={"decoder_hidden": {"ge": 6}, "decoder_layers": {"ge": 1}, "decoder_heads": {"ge": 1}},
        rules=("decoder",),
    )

    def __init__(
        self,
        spec: BackboneSpec,
        decoder_hidden: int = 384,
        decoder_layers: int = 4,
        decoder_heads: int = 12,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        if spec.patch_size is None or spec.grid is None:
            raise ValueError("objective=mae needs a ViT backbone (patch tokens); use objective=mim for CNNs")
        self.patch_size, self.grid, self.in_channels = spec.patch_size, spec.grid, spec.in_channels
        patch_voxels = spec.in_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.decoder = MAEDecoder(
            spec.feature_dim, spec.grid, patch_voxels, decoder_hidden, decoder_layers, decoder_heads
        )
        self.norm_pix_loss = norm_pix_loss

    def repeated_blocks(self) -> list[nn.Module]:
        """The decoder's blocks: compiled one by one under ZeRO-3 (`pretrain/training/speedups.py`)."""
        return list(self.decoder.blocks)

    def encode_visible(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """→ latent [B, n_visible, C] of the visible tokens and ids [B, N] (`visible_then_hidden`): the visible
        positions ids[:, :n_visible], then the hidden ones."""
        ids = visible_then_hidden(batch["mask"])
        ids_keep = ids[:, : n_visible_of(batch)]
        # only the visible patches are embedded and encoded, each at its own position (RoPE backbones need ids)
        return backbone.encode(backbone.embed(batch["image"], ids_keep), ids_keep), ids

    def reconstruction_loss(self, batch: dict, latent: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """latent [B, n_visible, C] and ids [B, N] from `encode_visible` → (loss, logs). The decoder's blocks see
        every token (MAE's design); its last block, norm and head compute the N - n_visible hidden ones alone, since
        only they count. `visible_loss`, a diagnostic, is computed on logging steps alone (`batch["log_step"]`, a
        Python bool; absent = True), when the decoder predicts every position."""
        n_visible = latent.shape[1]
        log_visible = batch.get("log_step", True)
        # one call of the decoder's own forward (DeepSpeed ZeRO-3 gathers a module's weights around its forward)
        pred = self.decoder(latent, ids, hidden_only=not log_visible)  # in the order of ids: visible, then hidden
        hidden = pred[:, n_visible:] if log_visible else pred
        loss = patch_error(batch["image"], hidden, ids[:, n_visible:], self.patch_size, self.norm_pix_loss)
        logs = {"loss": loss.detach()}
        if log_visible:
            with torch.no_grad():
                visible = pred[:, :n_visible]
                logs["visible_loss"] = squared_error(
                    batch["image"], visible, ids[:, :n_visible], self.patch_size, self.norm_pix_loss
                )
        return loss, logs

    def forward(self, batch: dict, backbone: nn.Module) -> tuple[torch.Tensor, dict]:
        latent, ids = self.encode_visible(batch, backbone)
        return self.reconstruction_loss(batch, latent, ids)

    @torch.no_grad()
    def reconstruct(self, batch: dict, backbone: nn.Module) -> dict[str, torch.Tensor]:
        """→ {"original", "masked", "reconstruction"}: [B, C, X, Y, Z] each, for pictures. Hidden patches of
        the reconstruction are the prediction (de-standardised with the true patch statistics, as MAE shows
        them); visible ones are the input."""
        x = batch["image"].float()
        latent, ids = self.encode_visible(batch, backbone)
        pred = self.decoder(latent, ids).float()  # in the order of ids → raster order:
        pred = torch.empty_like(pred).scatter_(1, ids.unsqueeze(-1).expand_as(pred), pred)
        patches = patchify(x, self.patch_size)
        _, mean, std = standardised(patches) if self.norm_pix_loss else (None, 0.0, 1.0)
        hidden = batch["mask"].unsqueeze(-1).float()
        recon = patches * (1 - hidden) + (pred * std + mean) * hidden
        shape = (self.patch_size, self.grid, self.in_channels)
        return {
            "original": x,
            "masked": unpatchify(patches * (1 - hidden), *shape),
            "reconstruction": unpatchify(recon, *shape),
        }
