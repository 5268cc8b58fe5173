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
        if num_layers < 1:
            raise ValueError(f"the MAE decoder needs at least one block; got num_layers={num_layers}")
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

    def mix(self, latent: torch.Tensor, ids: torch.Tensor, hidden_only: bool = False) -> torch.Tensor:
        """latent: [B, n_visible, C_enc] of the positions ids[:, :n_visible]; ids: [B, N] every position, the visible
        ones first (`visible_then_hidden`) → the tokens after the blocks in the order of ids, [B, N, hidden]; with
        `hidden_only` those of ids[:, n_visible:] alone, [B, N - n_visible, hidden]: the last block attends from
        every token but computes only the hidden ones (attention is indifferent to the tokens' order, each carries
        its position). Static shapes, no host sync. The fp32 mask token and position embedding are cast to the
        activation dtype so a bf16 autocast stream stays bf16."""
        if ids.shape[1] != self.n_tokens:
            raise ValueError(f"the decoder takes every position's id: got {ids.shape[1]} of {self.n_tokens}")
        visible = self.proj(latent)
        b, n_visible, c = visible.shape
        hidden = self.mask_token.to(visible.dtype).expand(b, self.n_tokens - n_visible, c)
        tokens = torch.cat([visible, hidden], dim=1) + self.position_embeddings[0].to(visible.dtype)[ids]
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return self.blocks[-1](tokens, n_visible if hidden_only else 0)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, n, hidden] from `mix` → voxels [B, n, patch_voxels]."""
        return self.pred(self.norm(tokens))

    def forward(self, latent: torch.Tensor, ids: torch.Tensor, hidden_only: bool = False) -> torch.Tensor:
        """latent [B, n_visible, C_enc] of the positions ids[:, :n_visible], ids [B, N] → predictions in the order of
        ids, [B, N, patch_voxels], or for the hidden positions ids[:, n_visible:] alone (`mix`)."""
        return self.predict(self.mix(latent, ids, hidden_only))
