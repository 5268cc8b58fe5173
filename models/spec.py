"""What an objective needs to know about a backbone, without holding a reference to it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """in_channels: image channels; feature_dim: width of `backbone.pooled(x)`;
    patch_size/grid: token geometry of a ViT (None for CNNs); stage_channels: encoder widths of a CNN."""

    in_channels: int
    feature_dim: int
    patch_size: tuple[int, int, int] | None = None
    grid: tuple[int, int, int] | None = None
    stage_channels: tuple[int, ...] | None = None
