"""What a backbone is (its declaration, on the class) and what an objective needs to know about a built one (its
spec). Plain data, no torch: the config checks read declarations before anything heavy is imported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class BackboneDeclaration:
    """Stated once on a backbone class as `declaration = BackboneDeclaration(...)`, with literal arguments only:
    `pretrain/config/declarations.py` reads it from the source, before torch is imported.

    kind: "tokens" (patch tokens: `embed(x, ids)` / `encode(tokens, ids)` on any subset of positions, `spec.grid`) or
        "cnn" (encoder stages: `encode(x, visible)` → skips, `decode(skips)`, `spec.stage_channels`);
    architecture: the name an export's backbone.json carries and fine-tuning builds from ("vit", "resenc");
    export_class: the dotted class a `format=monai` export loads into with strict=True;
    formats: the `voxfm export format=` values it supports;
    decoder: has a decoder of its own, which objectives that train the encoder alone freeze (`freeze_decoder()`);
    unpicklable: why its modules cannot be pickled (so no `strategy=ddp_spawn`), or None;
    bounds: {argument: {"ge" | "gt" | "le" | "lt": number}}, checked with the config before anything is built;
    token_size: the constructor argument that holds a token's edge in voxels ("patch_size"), the mask cell an
        objective's `masking.patch_size: null` means; None for a backbone without tokens;
    rules: the shape rules of `models/rules.py` (`RULES` keys) its arguments obey, checked with the config.
    The class also names its adapter (`adapter = ...`, `models/adapters/`), and it keeps the contract of
    `models/protocols.py` for its kind.
    Every backbone also has `pooled(x) -> [B, spec.feature_dim]`, `spec` and `repeated_blocks()`."""

    kind: Literal["tokens", "cnn"]
    architecture: str
    export_class: str
    formats: tuple = ("monai", "full")
    decoder: bool = False
    unpicklable: str | None = None
    bounds: dict = field(default_factory=dict)
    token_size: str | None = None
    rules: tuple = ()


@dataclass(frozen=True)
class BackboneSpec:
    """in_channels: image channels; feature_dim: width of `backbone.pooled(x)`;
    patch_size/grid: token geometry of a transformer (None for CNNs); layers/heads: its depth and heads (what a
    plain ViT of the same size needs: the benches' MONAI reference); stage_channels: encoder widths of a CNN."""

    in_channels: int
    feature_dim: int
    patch_size: tuple[int, int, int] | None = None
    grid: tuple[int, int, int] | None = None
    stage_channels: tuple[int, ...] | None = None
    layers: int | None = None
    heads: int | None = None
