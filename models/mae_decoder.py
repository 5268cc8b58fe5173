"""Lightweight MAE decoder (He et al. 2022): visible latents + mask tokens → voxels per patch."""

from __future__ import annotations

import torch
from torch import nn

from voxfm.models.rules import decoder_fits
from voxfm.models.vit_blocks import Block, LayerNorm, _init_weights, sincos_position_embedding


class MAEDecoder(nn.Module):
    def __init__(
        self,
        encoder_hidden: int,
        grid: tuple[int, int, int],
        patch_voxels: int,
        hidden_size: int = 384,
        num_layers: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        problem = decoder_fits(hidden_size, num_heads)
        if problem:
            raise ValueError(problem)
        self.n_tokens = grid[0] * grid[1] * grid[2]
        self.proj = nn.Linear(encoder_hidden, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.position_embeddings = sincos_position_embedding(grid, hidden_size)
        self.blocks = nn.ModuleList(
            Block(hidden_size, int(hidden_size * mlp_ratio), num_heads, qkv_bias=True) for _ in range(num_layers)
        )
        self.norm = LayerNorm(hidden_size)
        self.pred = nn.Linear(hidden_size, patch_voxels)
        self.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def mix(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """latent: [B, n_visible, C_enc] for the token positions ids_keep: [B, n_visible] → every position after the
        blocks [B, N, hidden] (scatter: static shapes, no host sync). The fp32 mask token and position embedding
        are cast to the activation dtype so a bf16 autocast stream stays bf16."""
        visible = self.proj(latent)
        b, _, c = visible.shape
        tokens = self.mask_token.to(visible.dtype).expand(b, self.n_tokens, c)
        tokens = tokens.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, c), visible)
        tokens = tokens + self.position_embeddings.to(visible.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def predict(self, tokens: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: [B, N, hidden] from `mix` → voxels [B, N, patch_voxels]; with ids [B, n] only those positions,
        [B, n, patch_voxels] (the loss needs the hidden ones alone: the head and norm run on n of N tokens)."""
        if ids is not None:
            tokens = tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.pred(self.norm(tokens))

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """latent [B, n_visible, C_enc] at ids_keep [B, n_visible] → predictions [B, N, patch_voxels] for every
        position, or [B, n, patch_voxels] for the positions ids [B, n]."""
        return self.predict(self.mix(latent, ids_keep), ids)
