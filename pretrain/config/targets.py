"""Schemas of the `_target_` nodes (constructor arguments of backbones, objectives, device stage, optimiser),
chosen by target through an explicit dict; `tests/test_schema.py` keeps their fields equal to the constructors'."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def bounded(**bounds) -> dict:
    """ge / gt / le / lt bounds as dataclass field metadata, read by `pretrain.config.schema.check_node`."""
    return {"metadata": bounds}


@dataclass
class ViTSchema:
    in_channels: int = field(**bounded(ge=1))
    img_size: int | list[int]
    patch_size: int | list[int]
    hidden_size: int = field(**bounded(ge=1))
    mlp_dim: int = field(**bounded(ge=1))
    num_layers: int = field(**bounded(ge=1))
    num_heads: int = field(**bounded(ge=1))
    pos_embed_type: Literal["sincos", "learnable"]
    qkv_bias: bool


@dataclass
class ResEncSchema:
    in_channels: int = field(**bounded(ge=1))
    out_channels: int = field(**bounded(ge=1))
    features_per_stage: list[int]
    n_blocks_per_stage: list[int]
    n_conv_per_stage_decoder: list[int]
    strides: list[int] | None
    kernel_size: int = field(**bounded(ge=1))


@dataclass
class MAESchema:
    decoder_hidden: int = field(**bounded(ge=6))
    decoder_layers: int = field(**bounded(ge=1))
    decoder_heads: int = field(**bounded(ge=1))
    norm_pix_loss: bool


@dataclass
class MIMSchema:
    pass


@dataclass
class SimCLRSchema:
    proj_hidden: int = field(**bounded(ge=1))
    proj_dim: int = field(**bounded(ge=1))
    temperature: float = field(**bounded(gt=0.0))


@dataclass
class MAEContrastiveSchema:
    mae: Any
    mae_weight: float = field(**bounded(ge=0.0))
    contrastive_weight: float = field(**bounded(ge=0.0))
    proj_hidden: int = field(**bounded(ge=1))
    proj_dim: int = field(**bounded(ge=1))
    temperature: float = field(**bounded(gt=0.0))


@dataclass
class ViewStageSchema:
    crop_size: int | list[int]
    n_views: Literal[1, 2]
    overlap: float = field(**bounded(gt=0.0, le=1.0))
    flip_prob: float = field(**bounded(ge=0.0, le=1.0))
    rotate_prob: float = field(**bounded(ge=0.0, le=1.0))
    rotate_plane: list[int] | None
    augment: Any
    masking: Any


@dataclass
class AugmentSchema:
    gamma_prob: float = field(**bounded(ge=0.0, le=1.0))
    gamma_range: list[float]
    scale_prob: float = field(**bounded(ge=0.0, le=1.0))
    scale_range: list[float]
    shift_range: list[float]
    noise_prob: float = field(**bounded(ge=0.0, le=1.0))
    noise_std: float = field(**bounded(ge=0.0))


@dataclass
class MaskingSchema:
    mask_ratio: float = field(**bounded(gt=0.0, lt=1.0))
    patch_size: int | list[int]


@dataclass
class AdamWSchema:
    lr: float = field(**bounded(gt=0.0))
    betas: list[float]
    eps: float = field(**bounded(gt=0.0))
    weight_decay: float = field(**bounded(ge=0.0))
    amsgrad: bool


TARGETS: dict[str, type] = {
    "models.vit.ViT": ViTSchema,
    "models.resenc.ResEncUNet": ResEncSchema,
    "pretrain.objectives.mae.MAEObjective": MAESchema,
    "pretrain.objectives.mim.MIMObjective": MIMSchema,
    "pretrain.objectives.simclr.SimCLRObjective": SimCLRSchema,
    "pretrain.objectives.mae_contrastive.MAEContrastiveObjective": MAEContrastiveSchema,
    "data.views.ViewStage": ViewStageSchema,
    "data.augment.IntensityAugment": AugmentSchema,
    "data.masking.RandomPatchMasking": MaskingSchema,
    "torch.optim.AdamW": AdamWSchema,
    "torch.optim.Adam": AdamWSchema,
}
