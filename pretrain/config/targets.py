"""Schemas of the `_target_` nodes that are not objectives or backbones (device view pipeline, augmentation,
masking, optimiser), chosen by target through an explicit dict; `tests/config/test_schema.py` keeps their fields
equal to the constructors'. Objectives and backbones declare themselves instead (`declared_schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Literal

from voxfm.pretrain.config.declarations import Declared


def bounded(**bounds) -> dict:
    """ge / gt / le / lt bounds as dataclass field metadata, read by `pretrain.config.schema.check_node`."""
    return {"metadata": bounds}


@dataclass
class ViewPipelineSchema:
    crop_size: int | list[int]
    n_views: Literal[1, 2]
    overlap: float = field(**bounded(gt=0.0, le=1.0))
    flip_prob: float = field(**bounded(ge=0.0, le=1.0))
    rotate_prob: float = field(**bounded(ge=0.0, le=1.0))
    rotate_plane: list[int] | None
    augment: Any
    masking: Any


@dataclass
class MultiCropSchema:
    crop_size: int | list[int]
    local_size: int | list[int]
    n_local: int = field(**bounded(ge=0))
    n_views: Literal[2]
    global_scale: list[float]
    local_scale: list[float]
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
    patch_size: int | list[int] | None  # None: the backbone's token (filled in when the config is composed)


@dataclass
class BlockMaskingSchema:
    patch_size: int | list[int] | None
    ratio_range: list[float]
    probability: float = field(**bounded(ge=0.0, le=1.0))
    min_block: int = field(**bounded(ge=1))
    max_block: int = field(**bounded(ge=1))


@dataclass
class AdamWSchema:
    lr: float = field(**bounded(gt=0.0))
    betas: list[float]
    eps: float = field(**bounded(gt=0.0))
    weight_decay: float = field(**bounded(ge=0.0))
    amsgrad: bool


@dataclass
class GramAnchoringSchema:
    weight: float = field(**bounded(ge=0.0))
    start_step: int = field(**bounded(ge=0))
    refresh_every: int | None = field(**bounded(ge=1))
    teacher_scale: int = field(**bounded(ge=1))


TARGETS: dict[str, type] = {
    "voxfm.data.views.pipeline.ViewPipeline": ViewPipelineSchema,
    "voxfm.data.views.augment.IntensityAugment": AugmentSchema,
    "voxfm.data.views.masking.RandomPatchMasking": MaskingSchema,
    "voxfm.data.views.multicrop.MultiCropPipeline": MultiCropSchema,
    "voxfm.data.views.masking.BlockMasking": BlockMaskingSchema,
    "voxfm.pretrain.objectives.dino.gram.GramAnchoring": GramAnchoringSchema,
    "torch.optim.AdamW": AdamWSchema,
    "torch.optim.Adam": AdamWSchema,
}


# Annotation names a declared constructor may use; any other (a class, a callable) reads as Any.
ANNOTATION_NAMES = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "list": list,
    "tuple": tuple,
    "dict": dict,
    "None": None,
    "Literal": Literal,
    "Any": Any,
}


def _annotation(text: str | None):
    if text is None:
        return Any
    try:
        return eval(text, {"__builtins__": {}}, ANNOTATION_NAMES)  # names above only: plain types
    except Exception:
        return Any


def declared_schema(declared: Declared) -> type:
    """A schema like the ones above, made from a declared class's constructor: its parameters, their annotations
    and the bounds its declaration states."""
    bounds = declared.declaration.bounds
    fields = [
        (name, _annotation(text), field(**bounded(**bounds.get(name, {}))))
        for name, (text, _) in declared.arguments.items()
    ]
    return make_dataclass(declared.target.rsplit(".", 1)[-1] + "Schema", fields)
