"""3D Vision Transformer whose parameter names map 1:1 onto `monai.networks.nets.ViT`.

Same maths as MONAI's ViT (pre-norm blocks, GELU MLP, fixed sin-cos or learnable position
embeddings, an optional class token `cls_token` before the patch tokens), but attention goes through
`F.scaled_dot_product_attention` (flash / memory-efficient kernels), the encoder can run on a subset of tokens,
which masked autoencoding needs, and on crops of any size the patch divides (the position embedding is
interpolated to their grid: self-distillation's local crops). Stochastic depth (`drop_path_rate`) has no
parameters, so the weights still load into MONAI's ViT.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from voxfm.models.adapters.vit import ViTAdapter
from voxfm.models.rules import heads_divide, patch_divides, sincos_fits
from voxfm.models.spec import BackboneDeclaration, BackboneSpec
from voxfm.models.vit_blocks import (
    Block,
    LayerNorm,
    PatchEmbedding,
    _init_weights,
    _triple,
)


class ViT(nn.Module):
    """3D ViT encoder. `forward(x)` returns the normed patch tokens [B, N, hidden] (MONAI's `ViT(x)[0]`, less the
    class token when there is one)."""

    declaration = BackboneDeclaration(
        kind="tokens",
        architecture="vit",
        export_class="monai.networks.nets.ViT",
        formats=("monai", "full"),
        bounds={
            "in_channels": {"ge": 1},
            "hidden_size": {"ge": 1},
            "mlp_dim": {"ge": 1},
            "num_layers": {"ge": 1},
            "num_heads": {"ge": 1},
        },
        token_size="patch_size",
        rules=("patch_size", "heads", "sincos"),
    )
    adapter = ViTAdapter

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int | tuple[int, int, int] = 96,
        patch_size: int | tuple[int, int, int] = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        pos_embed_type: Literal["sincos", "learnable"] = "sincos",
        qkv_bias: bool = False,
        class_token: bool = False,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        img_size, patch_size = _triple(img_size), _triple(patch_size)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate}: expected a rate in [0, 1)")
        if pos_embed_type not in ("sincos", "learnable"):
            raise ValueError(f"pos_embed_type={pos_embed_type!r}; allowed: 'sincos', 'learnable'")
        for problem in (
            patch_divides(img_size, list(patch_size), "img_size"),
            heads_divide(hidden_size, num_heads),
            sincos_fits(hidden_size, pos_embed_type),
        ):
            if problem:
                raise ValueError(problem)
        self.in_channels, self.img_size, self.patch_size = in_channels, img_size, patch_size
        self.hidden_size, self.mlp_dim, self.num_layers, self.num_heads = hidden_size, mlp_dim, num_layers, num_heads
        self.pos_embed_type, self.qkv_bias, self.drop_path_rate = pos_embed_type, qkv_bias, drop_path_rate
        self.patch_embedding = PatchEmbedding(in_channels, img_size, patch_size, hidden_size, pos_embed_type)
        if class_token:  # MONAI's name and shape (its `classification=True` ViT); no position embedding, as there
            self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        else:
            self.cls_token = None
        rates = [drop_path_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]  # linear over depth
        self.blocks = nn.ModuleList(Block(hidden_size, mlp_dim, num_heads, qkv_bias, rate) for rate in rates)
        self.norm = LayerNorm(hidden_size)
        self.apply(_init_weights)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.patch_embedding.grid

    def embed(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, X, Y, Z] → position-embedded tokens [B, N, hidden]; with ids [B, n] only those positions,
        [B, n, hidden] (masked autoencoding: the visible patches alone are embedded)."""
        return self.patch_embedding(x, ids)

    def encode(self, tokens: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: [B, n, hidden] (any subset of positions, already position-embedded by `embed`, so `ids` is not
        needed here) → normed features [B, n, hidden] (the class token, if any, runs with them and is left out)."""
        return self._encode(tokens)[1]

    def _encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """→ (normed class token [B, hidden] or None, normed patch tokens [B, n, hidden])."""
        prefix = 0
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
            prefix = 1
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return (tokens[:, 0] if prefix else None), tokens[:, prefix:]

    def features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, C, *S], any S the patch divides → (global feature [B, hidden]: the class token, or the mean patch
        token without one; patch features [B, N, hidden]). masks [B, N] bool: those patches enter as `mask_token`
        (self-distillation's student; see `PatchEmbedding.masked`)."""
        cls, patches = self._encode(self.patch_embedding.masked(x, masks, mask_token))
        return (patches.mean(dim=1) if cls is None else cls), patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.patch_embedding.masked(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x → [B, hidden]: the class token when the ViT has one, else the token features averaged over positions."""
        return self.features(x)[0]

    def repeated_blocks(self) -> list[nn.Module]:
        """The units speed-ups wrap from outside (activation checkpointing, per-block compile)."""
        return list(self.blocks)

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(
            self.in_channels, self.hidden_size, self.patch_size, self.grid, layers=self.num_layers, heads=self.num_heads
        )

    def monai_kwargs(self) -> dict:
        """Arguments that build the matching `monai.networks.nets.ViT` (see `pretrain/export/run.py`): a segmentation
        backbone (`classification=False`), so a class token is left out of the export (`export/formats.py`)."""
        return {
            "in_channels": self.in_channels,
            "img_size": list(self.img_size),
            "patch_size": list(self.patch_size),
            "hidden_size": self.hidden_size,
            "mlp_dim": self.mlp_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "proj_type": "conv",
            "pos_embed_type": self.pos_embed_type,
            "classification": False,
            "qkv_bias": self.qkv_bias,
            "spatial_dims": 3,
        }
