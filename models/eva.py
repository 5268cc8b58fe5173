"""EVA encoder blocks as nnU-Net's Primus uses them (timm's `EvaBlock` / dynamic_network_architectures' `Eva`),
with their parameter names, built without timm: pre-norm blocks with separate q/k/v projections (k without bias),
an optional LayerNorm before the attention output projection, a SwiGLU MLP with an inner LayerNorm, LayerScale,
drop path; learned absolute positions and 3D axial RoPE (computed as timm's `RotaryEmbeddingCat` computes it),
applied to q and k before `F.scaled_dot_product_attention`. `models/primus.py` puts them between its tokeniser and
its patch decoder."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from voxfm.models.vit_blocks import LayerNorm, drop_path


def axial_rope(grid: tuple[int, int, int], dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """[N, 2 * 1.5 * dim] = (sin, cos) of 3D axial rotary embeddings for the raster positions of `grid`, computed as
    timm's `RotaryEmbeddingCat(dim, in_pixels=False, feat_shape=grid, ref_feat_shape=grid)` does: dim // 4 frequency
    bands per axis, each angle repeated for the (even, odd) pair it rotates."""
    bands_n = dim // 4
    bands = 1.0 / temperature ** (torch.arange(0, bands_n, 1, dtype=torch.int64).to(torch.float32) / bands_n)
    axes = [torch.arange(s, dtype=torch.int64).to(torch.float32) / s * s for s in grid]  # timm's rescale to ref
    angles = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).unsqueeze(-1) * bands  # [X, Y, Z, 3, bands]
    n = math.prod(grid)
    sin = angles.sin().reshape(n, -1).repeat_interleave(2, -1)
    cos = angles.cos().reshape(n, -1).repeat_interleave(2, -1)
    return torch.cat([sin, cos], dim=-1)


def rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, n, head_dim], rope: [B or 1, 1, n, 2 * head_dim] → x rotated pairwise (x0, x1) → (x0 cos − x1
    sin, x1 cos + x0 sin)."""
    sin, cos = rope.to(x.dtype).chunk(2, dim=-1)
    rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
    return x * cos + rotated * sin


class Rope(nn.Module):
    """Holds the (non-persistent) table `pos_embed` [N, 2 * head_dim], as timm's module does."""

    def __init__(self, grid: tuple[int, int, int], dim: int):
        super().__init__()
        self.register_buffer("pos_embed", axial_rope(grid, dim), persistent=False)


class EvaAttention(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, num_prefix_tokens: int, scale_norm: bool, attn_drop: float, proj_drop: float
    ):
        super().__init__()
        self.num_heads, self.num_prefix_tokens, self.attn_drop = num_heads, num_prefix_tokens, attn_drop
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.norm = LayerNorm(dim) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        """x: [B, N, C] (prefix tokens first); rope: [B or 1, N - prefix, 2 * head_dim] or None."""
        b, n, c = x.shape
        q, k, v = (
            proj(x).view(b, n, self.num_heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        if rope is not None:
            p, table = self.num_prefix_tokens, rope.unsqueeze(1)
            q = torch.cat([q[:, :, :p], rotate(q[:, :, p:], table)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :p], rotate(k[:, :, p:], table)], dim=2).type_as(v)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(b, n, c))))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.drop1 = nn.Dropout(drop)
        self.norm = LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1_g(x)) * self.fc1_x(x)))))


class DropPath(nn.Module):
    """Stochastic depth: a residual branch dropped for whole samples, the rest scaled by 1 / keep."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)


class EvaBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        num_prefix_tokens: int,
        scale_attn_inner: bool,
        init_values: float | None,
        drop_path: float,
        proj_drop: float,
        attn_drop: float,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = EvaAttention(dim, num_heads, num_prefix_tokens, scale_attn_inner, attn_drop, proj_drop)
        self.gamma_1 = nn.Parameter(init_values * torch.ones(dim)) if init_values is not None else None
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio), proj_drop)
        self.gamma_2 = nn.Parameter(init_values * torch.ones(dim)) if init_values is not None else None
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), rope)
        x = x + self.drop_path1(a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        return x + self.drop_path2(m if self.gamma_2 is None else self.gamma_2 * m)


class Eva(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        grid: tuple[int, int, int],
        num_reg_tokens: int,
        use_rot_pos_emb: bool,
        use_abs_pos_emb: bool,
        mlp_ratio: float,
        drop_path_rate: float,
        proj_drop_rate: float,
        attn_drop_rate: float,
        init_values: float | None,
        scale_attn_inner: bool,
    ):
        super().__init__()
        self.num_prefix_tokens = num_reg_tokens
        n = math.prod(grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, n + num_reg_tokens, embed_dim)) if use_abs_pos_emb else None
        if use_rot_pos_emb:
            self.rope = Rope(grid, embed_dim // num_heads * 2 // 3)
        else:
            self.rope = None
        rates = np.linspace(0, drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            EvaBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                num_reg_tokens,
                scale_attn_inner,
                init_values,
                float(rates[i]),
                proj_drop_rate,
                attn_drop_rate,
            )
            for i in range(depth)
        )
        self.norm = LayerNorm(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's EVA initialisation: truncated-normal Linear weights (std 0.02), zero biases, each block's output
        projections scaled by 1 / sqrt(2 * layer)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        with torch.no_grad():
            for layer, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))
