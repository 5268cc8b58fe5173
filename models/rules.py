"""Shape rules of the backbones, written once and used by the models' constructors and by the config checks
(`pretrain/config/checks.py`, before torch is imported). Plain Python, no torch.

Each rule returns an error line or None; `where` prefixes the keys it names ("model." in the config checks, ""
in a constructor), `size_key` names what must be divisible (a crop in the config, `img_size` in the ViT).
Sizes are [X, Y, Z] in voxels.
"""

from __future__ import annotations

import math


def triple(v) -> list[int]:
    return [v] * 3 if isinstance(v, int) else list(v)


def patch_divides(size, patch_size, size_key: str, where: str = "", patch_key: str = "patch_size") -> str | None:
    if any(s % p for s, p in zip(triple(size), triple(patch_size))):
        return f"{size_key}={triple(size)}: must be divisible by {where}{patch_key}={patch_size}"
    return None


def heads_divide(hidden_size: int, num_heads: int, where: str = "") -> str | None:
    if hidden_size % num_heads:
        return f"{where}hidden_size={hidden_size}: must be divisible by {where}num_heads={num_heads}"
    return None


def sincos_fits(hidden_size: int, pos_embed_type: str, where: str = "") -> str | None:
    """3D sin-cos position embeddings split the width into sin and cos of three axes: hidden % 6 == 0."""
    if pos_embed_type == "sincos" and hidden_size % 6:
        return (
            f"{where}hidden_size={hidden_size}: must be divisible by 6 for {where}pos_embed_type=sincos "
            "(or use learnable)"
        )
    return None


def decoder_fits(hidden_size: int, num_heads: int, where: str = "decoder_") -> str | None:
    """The MAE decoder: heads split its width, and its sin-cos position embedding needs width % 6 == 0."""
    if hidden_size % 6 or hidden_size % num_heads:
        return (
            f"{where}hidden={hidden_size}: must be divisible by 6 (sin-cos position embedding) and by "
            f"{where}heads={num_heads}"
        )
    return None


def rope_fits(embed_dim: int, num_heads: int, rope: bool = True, where: str = "") -> str | None:
    """Primus: heads split the width, and 3D axial RoPE splits a head's width over three axes in rotated pairs
    (nnU-Net's Eva): head width = 1.5 x a multiple of 4 (e.g. 864 / 12 = 72 = 1.5 x 48)."""
    if embed_dim % num_heads:
        return f"{where}embed_dim={embed_dim}: must be divisible by {where}eva_numheads={num_heads}"
    head = embed_dim // num_heads
    if rope and (head % 3 or (head * 2 // 3) % 4 or head * 2 % 3):
        return (
            f"{where}embed_dim={embed_dim} / {where}eva_numheads={num_heads} = {head} per head: RoPE needs 1.5 x "
            f"a multiple of 4 (e.g. 864 / 12 = 72), or {where}use_rot_pos_emb=false"
        )
    return None


def unet_stride(features_per_stage, strides=None) -> int:
    """The total downsampling of an encoder: the product of its stage strides (default 1, then 2 per stage)."""
    return math.prod(strides or [1] + [2] * (len(features_per_stage) - 1))


def stride_divides(size, features_per_stage, strides, size_key: str) -> str | None:
    stride = unet_stride(features_per_stage, strides)
    if any(s % stride for s in triple(size)):
        return f"{size_key}={triple(size)}: must be divisible by the UNet's total stride {stride}"
    return None


def stage_counts(features_per_stage, n_blocks_per_stage, n_conv_per_stage_decoder, where: str = "") -> str | None:
    n = len(features_per_stage)
    if len(n_blocks_per_stage) != n or len(n_conv_per_stage_decoder) != n - 1:
        return (
            f"{where.rstrip('.') or 'model'}: {n} stages need {n} n_blocks_per_stage and {n - 1} "
            f"n_conv_per_stage_decoder, got {list(n_blocks_per_stage)} and {list(n_conv_per_stage_decoder)}"
        )
    return None


# The rules a declaration may name (`BackboneDeclaration.rules`, `ObjectiveDeclaration.rules`), each applied to
# the complete arguments `a` (defaults filled in) for a crop `size` named `key` in errors.
RULES = {
    "patch_size": lambda a, size, key, where: patch_divides(size, a["patch_size"], key, where),
    "patch_embed_size": lambda a, size, key, where: patch_divides(
        size, a["patch_embed_size"], key, where, "patch_embed_size"
    ),
    "rope": lambda a, size, key, where: rope_fits(
        a["embed_dim"], a["eva_numheads"], a.get("use_rot_pos_emb", True), where
    ),
    "heads": lambda a, size, key, where: heads_divide(a["hidden_size"], a["num_heads"], where),
    "sincos": lambda a, size, key, where: sincos_fits(a["hidden_size"], a["pos_embed_type"], where),
    "decoder": lambda a, size, key, where: decoder_fits(a["decoder_hidden"], a["decoder_heads"], where + "decoder_"),
    "unet_stride": lambda a, size, key, where: stride_divides(size, a["features_per_stage"], a.get("strides"), key),
    "unet_stages": lambda a, size, key, where: stage_counts(
        a["features_per_stage"], a["n_blocks_per_stage"], a["n_conv_per_stage_decoder"], where
    ),
}


def shape_errors(arguments: dict, size, size_key: str, where: str, rules) -> list[str]:
    """The named `rules` (keys of `RULES`, as a declaration states them) on complete `arguments`."""
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        return [f"{where.rstrip('.') or 'config'}: declares unknown shape rule(s) {unknown}; known: {sorted(RULES)}"]
    return [f for f in (RULES[r](arguments, size, size_key, where) for r in rules) if f]
