"""Primus (Wald et al. 2025, nnU-Net's recommended transformer), built without timm, with nnU-Net's parameter names.

`state_dict()` keys, shapes and the forward equal those of
`dynamic_network_architectures.architectures.primus.Primus` (0.4.4) built with the same arguments (tested against it
in `tests/models/test_primus.py`), so weights move between the two by name. The network: a Conv3d tokeniser with
kernel = stride = patch (`down_projection`), an EVA encoder (`eva`: learned absolute positions plus 3D axial RoPE,
pre-norm blocks with separate q/k/v projections — k without bias —, an optional LayerNorm before the attention
output projection, a SwiGLU MLP with an inner LayerNorm, LayerScale, drop path) and a transposed-conv patch decoder
(`up_projection`). The EVA blocks and RoPE are in `models/eva.py`.

For masked autoencoding the encoder runs on any subset of tokens: `embed(x, ids)` embeds only the patches at
raster positions `ids`, and `encode(tokens, ids)` rotates them by *their own* positions, not by 0..n.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from voxfm.models.adapters.primus import PrimusAdapter
from voxfm.models.eva import Eva, axial_rope
from voxfm.models.rules import patch_divides, rope_fits
from voxfm.models.spec import BackboneDeclaration, BackboneSpec
from voxfm.models.vit_blocks import _triple, resized_positions

PRESETS = {"S": (12, 6, 396), "B": (12, 12, 792), "M": (16, 12, 864), "L": (24, 16, 1056)}  # depth, heads, dim


class LayerNormNd(nn.Module):
    """LayerNorm over the channels of [B, C, ...] (nnU-Net's `LayerNormNd`, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _round_to_8(value: float) -> int:
    return int(max(8, np.round((value + 1e-6) / 8) * 8))


class PatchDecode(nn.Module):
    """log2(patch) transposed-conv stages (kernel = stride = 2 on the axes still to upsample) with LayerNormNd +
    GELU between, channels shrinking geometrically from `embed_dim` to `out_channels` (nnU-Net's `PatchDecode`)."""

    def __init__(self, patch_size: tuple[int, int, int], embed_dim: int, out_channels: int):
        super().__init__()
        n = int(np.log(max(patch_size)) / np.log(2))
        strides = [[2 if (p / 2**k) % 2 == 0 else 1 for p in patch_size] for k in range(n)][::-1]
        reduction = (embed_dim / (2 * out_channels)) ** (1 / n)
        channels = [embed_dim] + [_round_to_8(embed_dim / reduction ** (k + 1)) for k in range(n)]
        channels[-1] = out_channels
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.ConvTranspose3d(channels[s], channels[s + 1], kernel_size=strides[s], stride=strides[s]),
                LayerNormNd(channels[s + 1]),
                nn.GELU(),
            )
            for s in range(n - 1)
        ]
        stages.append(nn.ConvTranspose3d(channels[-2], channels[-1], kernel_size=strides[-1], stride=strides[-1]))
        self.decode = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x)


class Primus(nn.Module):
    """Primus: `forward(x)` [B, C, X, Y, Z] → [B, num_classes, X, Y, Z] (the whole network, as nnU-Net runs it);
    `embed` / `encode` / `pooled` for the pretraining objectives (patch tokens in raster order of the patch grid)."""

    declaration = BackboneDeclaration(
        kind="tokens",
        architecture="primus",
        export_class="dynamic_network_architectures.architectures.primus.Primus",
        formats=("nnssl", "full"),
        decoder=True,
        bounds={
            "input_channels": {"ge": 1},
            "embed_dim": {"ge": 1},
            "num_classes": {"ge": 1},
            "eva_depth": {"ge": 1},
            "eva_numheads": {"ge": 1},
            "num_register_tokens": {"ge": 0},
            "drop_path_rate": {"ge": 0.0, "lt": 1.0},
        },
        token_size="patch_embed_size",
        rules=("patch_embed_size", "rope"),
    )
    adapter = PrimusAdapter

    def __init__(
        self,
        input_channels: int = 1,
        embed_dim: int = 864,
        patch_embed_size: int | tuple[int, int, int] = 8,
        num_classes: int = 1,
        eva_depth: int = 16,
        eva_numheads: int = 12,
        input_shape: int | tuple[int, int, int] = 160,
        num_register_tokens: int = 0,
        use_rot_pos_emb: bool = True,
        use_abs_pos_embed: bool = True,
        mlp_ratio: float = 4 * 2 / 3,
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        init_values: float | None = None,
        scale_attn_inner: bool = False,
    ):
        super().__init__()
        patch, shape = _triple(patch_embed_size), _triple(input_shape)
        for problem in (
            patch_divides(shape, list(patch), "input_shape", patch_key="patch_embed_size"),
            rope_fits(embed_dim, eva_numheads, use_rot_pos_emb),
        ):
            if problem:
                raise ValueError(problem)
        self.input_channels, self.embed_dim, self.patch_size, self.input_shape = input_channels, embed_dim, patch, shape
        self.num_classes, self.eva_depth, self.eva_numheads = num_classes, eva_depth, eva_numheads
        self.grid = tuple(s // p for s, p in zip(shape, patch))
        self.kwargs = {  # what builds the same network in nnU-Net (export, model card)
            "input_channels": input_channels,
            "embed_dim": embed_dim,
            "patch_embed_size": list(patch),
            "num_classes": num_classes,
            "eva_depth": eva_depth,
            "eva_numheads": eva_numheads,
            "input_shape": list(shape),
            "num_register_tokens": num_register_tokens,
            "use_rot_pos_emb": use_rot_pos_emb,
            "use_abs_pos_embed": use_abs_pos_embed,
            "mlp_ratio": mlp_ratio,
            "drop_path_rate": drop_path_rate,
            "proj_drop_rate": proj_drop_rate,
            "attn_drop_rate": attn_drop_rate,
            "init_values": init_values,
            "scale_attn_inner": scale_attn_inner,
        }
        self.down_projection = PatchEmbed(patch, input_channels, embed_dim)
        self.up_projection = PatchDecode(patch, embed_dim, num_classes)
        self.eva = Eva(
            embed_dim,
            eva_depth,
            eva_numheads,
            self.grid,
            num_register_tokens,
            use_rot_pos_emb,
            use_abs_pos_embed,
            mlp_ratio,
            drop_path_rate,
            proj_drop_rate,
            attn_drop_rate,
            init_values,
            scale_attn_inner,
        )
        self.register_buffer("mask_token", torch.zeros(1, 1, embed_dim))
        self._rope_tables: dict = {}  # RoPE of other grids (local crops), made on first use
        self.register_tokens = None
        if num_register_tokens > 0:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in (*self.down_projection.modules(), *self.up_projection.modules()):
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):  # nnU-Net's InitWeights_He(1e-2)
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                nn.init.zeros_(module.bias)

    def embed(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, X, Y, Z] → tokens [B, N, C] with their absolute position embedding; with ids [B, n] (raster
        positions) those tokens only, [B, n, C]."""
        tokens = self.down_projection(x).flatten(2).transpose(1, 2)
        if ids is not None:
            tokens = tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if self.eva.pos_embed is None:
            return tokens
        table = self.eva.pos_embed[0, self.eva.num_prefix_tokens :].to(tokens.dtype)
        return tokens + (table if ids is None else table[ids])

    def encode(self, tokens: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, n, C] at raster positions ids [B, n] (None: all N in order) → normed features [B, n, C]. The
        register tokens (with their position embeddings) go first and are dropped at the end; RoPE rotates each
        token by its own position."""
        rope = None
        if self.eva.rope is not None:
            table = self.eva.rope.pos_embed
            rope = table.unsqueeze(0) if ids is None else table[ids]
        return self._run(tokens, rope)[:, self.eva.num_prefix_tokens :]

    def _run(self, tokens: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        """Position-embedded patch tokens [B, n, C] → normed [B, prefix + n, C], register tokens first."""
        prefix = self.eva.num_prefix_tokens
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            if self.eva.pos_embed is not None:
                registers = registers + self.eva.pos_embed[:, :prefix]
            tokens = torch.cat([registers.to(tokens.dtype), tokens], dim=1)
        for block in self.eva.blocks:
            tokens = block(tokens, rope)
        return self.eva.norm(tokens)

    def _rope(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """The RoPE table [N, 2 · rope dim] of another grid (a local crop's): each token rotated by its integer
        position on that grid, as on the training grid. Made once per grid and device."""
        key = (grid, str(device))
        if key not in self._rope_tables:
            dim = self.embed_dim // self.eva_numheads * 2 // 3  # what `Eva` gives its `Rope`
            self._rope_tables[key] = axial_rope(grid, dim).to(device)
        return self._rope_tables[key]

    def features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, C, *S], any S the patch divides → (global feature [B, C]: the first register token, or the mean
        patch token without registers; patch features [B, N, C]). On another grid than the training one the
        absolute positions are interpolated (trilinear) and RoPE takes that grid's positions. masks [B, N] bool:
        those patches enter as `mask_token` [C] before their position is added (self-distillation's student)."""
        tokens = self.down_projection(x)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        if self.eva.pos_embed is not None:
            table = resized_positions(self.eva.pos_embed[0, self.eva.num_prefix_tokens :], self.grid, grid)
            tokens = tokens + table.to(tokens.dtype)
        rope = None
        if self.eva.rope is not None:
            rope = (self.eva.rope.pos_embed if grid == tuple(self.grid) else self._rope(grid, x.device)).unsqueeze(0)
        out = self._run(tokens, rope)
        prefix = self.eva.num_prefix_tokens
        patches = out[:, prefix:]
        return (out[:, 0] if prefix else patches.mean(dim=1)), patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encode(self.embed(x))
        b, _, c = tokens.shape
        return self.up_projection(tokens.transpose(1, 2).reshape(b, c, *self.grid))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x → [B, C]: the first register token when there are registers (self-distillation's class token), else
        the patch features averaged over positions."""
        return self.features(x)[0]

    decoder_prefix = "up_projection."  # PatchDecode's widths follow the class count: a fine-tune builds it anew

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Tokeniser, registers and EVA encoder: what a fine-tune with a frozen encoder keeps."""
        extra = [] if self.register_tokens is None else [self.register_tokens]
        return [*self.down_projection.parameters(), *self.eva.parameters(), *extra]

    def freeze_decoder(self) -> None:
        """Objectives that train the encoder alone leave the patch decoder as it is (and DDP sees no unused
        parameters)."""
        self.up_projection.requires_grad_(False)

    def repeated_blocks(self) -> list[nn.Module]:
        return list(self.eva.blocks)

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(
            self.input_channels,
            self.embed_dim,
            self.patch_size,
            self.grid,
            layers=self.eva_depth,
            heads=self.eva_numheads,
        )
