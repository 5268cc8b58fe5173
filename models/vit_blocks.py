"""The ViT's building blocks, with MONAI's parameter names (`monai.networks.blocks`): SDPA attention, pre-norm
blocks with GELU MLP and stochastic depth, the convolutional patch embedding, 3D sin-cos positions and their resize
to another grid. Shared by the ViT, the MAE decoder and Primus's EVA blocks."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import nn


def sincos_position_embedding(grid: tuple[int, int, int], hidden_size: int) -> nn.Parameter:
    """MONAI's fixed 3D sin-cos embedding [1, N, hidden] (frozen); its internal meshgrid warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_sincos_position_embedding(list(grid), hidden_size, spatial_dims=3)


def resized_positions(table: torch.Tensor, grid: tuple[int, int, int], new_grid: tuple[int, int, int]) -> torch.Tensor:
    """A position table [N, C] in raster order of `grid` → the table of `new_grid`, interpolated trilinearly (as
    DINO does for its local crops); the table itself when the grids are equal."""
    if tuple(new_grid) == tuple(grid):
        return table
    cube = table.T.reshape(1, -1, *grid)
    return F.interpolate(cube, size=tuple(new_grid), mode="trilinear", align_corners=False)[0].flatten(1).T


def _triple(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class Attention(nn.Module):
    """Multi-head self-attention; qkv layout matches MONAI's SABlock ("b h (qkv l d)")."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = FoldedBiasLinear(hidden_size, hidden_size * 3, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, first: int = 0) -> torch.Tensor:
        """x: [B, N, C] → [B, N - first, C]: every token is a key and a value, the tokens from `first` on alone are
        queries (the others' outputs would not be used)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if first:
            q = q[:, :, first:]
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N - first, C/heads]
        return self.out_proj(x.transpose(1, 2).reshape(b, n - first, c))


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` that keeps the activation dtype under autocast. CUDA autocast runs layer_norm in fp32, which
    would cast a bf16 residual stream to fp32 before every norm and back before every Linear; the kernel
    accumulates its statistics in fp32 either way. Same parameters, same maths in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


FOLD = 8  # columns of ones beside a folded linear's input: 8 keeps bf16 rows 16-byte aligned for the GEMMs


class _BiasGradInGemm(torch.autograd.Function):
    """x [..., K], weight [O, K], bias [O] → x W^T + b [..., O]; x is saved with FOLD columns of ones, so the weight
    gradient's GEMM dy^T [x | 1] [O, K + FOLD] also gives the bias gradient (its column K)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, FOLD), value=1.0)  # written by x's own kernel when compiled
        ctx.save_for_backward(padded, weight)
        rows = padded.reshape(-1, padded.shape[-1])[:, : x.shape[-1]]  # 2-D: the bias stays in the GEMM (addmm)
        return torch.addmm(bias, rows, weight.t()).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        padded, weight = ctx.saved_tensors
        k = weight.shape[1]
        both = dy.reshape(-1, dy.shape[-1]).t() @ padded.reshape(-1, padded.shape[-1])  # [O, K + FOLD]
        return dy @ weight, both[:, :k], both[:, k]


def _autocast(t: torch.Tensor, device: str) -> torch.Tensor:
    """t as autocast would hand it to a GEMM: fp32/fp16/bf16 in the autocast dtype; as it is without autocast."""
    if torch.is_autocast_enabled(device) and t.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return t.to(torch.get_autocast_dtype(device))
    return t


class FoldedBiasLinear(nn.Linear):
    """`nn.Linear` whose bias gradient comes out of its weight gradient's GEMM when it trains in a compiled step.
    The input is kept with FOLD columns of ones, written by the kernel that writes the input (a LayerNorm's), so
    dy^T [x | 1] = [dW | db], and no kernel reads the whole output gradient again to sum it over the rows: for the
    MLP's first linear, a pass over its 4×-wide hidden gradient per block. The forward and the input's gradient are
    the plain GEMMs; the weight gradient's has FOLD more columns (1% of its FLOPs at width 768). Same parameters,
    names and maths (the bias gradient sums the same products in another order). Otherwise `nn.Linear`: eagerly
    (the padding would be kernels of their own), in eval mode (inference, an eval model's `torch.export`), without a
    gradient to compute (frozen layers), and under `trainer.fp8` (torchao's Float8Linear replaces it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trains = self.training and torch.is_grad_enabled() and self.weight.requires_grad
        if not (trains and self.bias is not None and self.bias.requires_grad and torch.compiler.is_compiling()):
            return super().forward(x)
        device = x.device.type
        x, weight, bias = (_autocast(t, device) for t in (x, self.weight, self.bias))
        with torch.autocast(device, enabled=False):  # cast above as autocast would: the backward runs in that dtype
            return _BiasGradInGemm.apply(x, weight, bias)


class MLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_dim: int):
        super().__init__()
        self.linear1 = FoldedBiasLinear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: a residual branch dropped for whole samples, the rest scaled by 1 / keep. It draws from
    torch's global generator, as dropout does (and Primus's drop path): the one draw of a step that is not a
    function of (seed, step, rank) — a resumed run drops other branches than the uninterrupted one would have."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class Block(nn.Module):
    """Pre-norm transformer block (MONAI `TransformerBlock` without the unused cross-attention), with stochastic
    depth on both residual branches (no parameters)."""

    def __init__(
        self, hidden_size: int, mlp_dim: int, num_heads: int, qkv_bias: bool = False, drop_path_rate: float = 0.0
    ):
        super().__init__()
        self.norm1 = LayerNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads, qkv_bias)
        self.norm2 = LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, mlp_dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, first: int = 0) -> torch.Tensor:
        """x: [B, N, C] → [B, N - first, C]: the tokens from `first` on, having attended to every token (a last
        block whose earlier tokens' outputs go unused skips their projection, MLP and norms)."""
        branch = self.attn(self.norm1(x), first)
        x = (x[:, first:] if first else x) + drop_path(branch, self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class PatchConv(nn.Conv3d):
    """The patch conv (kernel = stride = patch), which also embeds patches already cut out: [M, C·p0·p1·p2]
    → [M, hidden], the same maths as a matmul. One module either way, so DeepSpeed ZeRO-3 gathers its weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return F.linear(x, self.weight.reshape(self.out_channels, -1), self.bias)
        return super().forward(x)


class PatchEmbedding(nn.Module):
    """Non-overlapping conv patches + position embedding (MONAI `PatchEmbeddingBlock`, proj "conv")."""

    def __init__(self, in_channels: int, img_size, patch_size, hidden_size: int, pos_embed_type: str):
        super().__init__()
        self.grid = tuple(i // p for i, p in zip(img_size, patch_size))
        self.patch_embeddings = PatchConv(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        if pos_embed_type == "sincos":
            self.position_embeddings = sincos_position_embedding(self.grid, hidden_size)
        else:
            n = self.grid[0] * self.grid[1] * self.grid[2]
            self.position_embeddings = nn.Parameter(torch.zeros(1, n, hidden_size))
            nn.init.trunc_normal_(self.position_embeddings, std=0.02)

    def positions(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The position embedding [N, hidden] for a patch grid: the table itself on the training grid, else the
        table interpolated (trilinear) to `grid`, as DINO does for its local crops."""
        return resized_positions(self.position_embeddings[0], self.grid, grid)

    def masked(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, C, *S] with any S the patch divides → tokens [B, N, hidden] of its grid with their (interpolated)
        position embedding; with masks [B, N] bool (True = hidden) those patches are replaced by `mask_token`
        [hidden] before the position is added (iBOT)."""
        tokens = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        grid = tuple(s // p for s, p in zip(x.shape[2:], self.patch_embeddings.kernel_size))
        return tokens + self.positions(grid).to(tokens.dtype)

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, X, Y, Z] → tokens [B, N, hidden], N = prod(img_size / patch_size), raster order; with
        ids [B, n] (raster positions) only those tokens, [B, n, hidden], at n/N of the cost: just those patches
        are cut out (one copy) and embedded as a matmul. Both go through the modules' own forwards, so DeepSpeed
        ZeRO-3 gathers their parameters. The (fp32) position embedding is cast to the tokens' dtype: added as
        it is, it would promote a bf16 autocast residual stream to fp32 for every block that follows."""
        if ids is None:
            return self.masked(x)
        b, c = x.shape[:2]
        (g0, g1, g2), (p0, p1, p2) = self.grid, self.patch_embeddings.kernel_size
        grid = x.reshape(b, c, g0, p0, g1, p1, g2, p2).permute(0, 2, 4, 6, 1, 3, 5, 7)  # a view
        rows = torch.arange(b, device=x.device).unsqueeze(1)
        patches = grid[(rows, *torch.unravel_index(ids, self.grid))]  # [B, n, C, p0, p1, p2]
        tokens = self.patch_embeddings(patches.reshape(b * ids.shape[1], -1)).reshape(b, ids.shape[1], -1)
        return tokens + self.position_embeddings[0].to(tokens.dtype)[ids]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
