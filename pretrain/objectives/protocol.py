"""What an objective is: `forward(batch, backbone) -> (loss, logs)` and one declaration of what it needs and offers.

An objective class states `declaration = ObjectiveDeclaration(...)` with literal arguments only;
`pretrain/config/declarations.py` reads it from the source before torch is imported, and the config checks,
the training module, pictures, export, benchmarks and fine-tuning read it instead of asking for class names.
Its constructor takes the backbone's `BackboneSpec` first, then the keys of `objective.loss` in the config.
Plain data, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ObjectiveDeclaration:
    """backbone: the kind it trains ("tokens" — a ViT —, "cnn" — encoder stages and a decoder —, or "any": it
        uses only `backbone.pooled(x)`);
    views: views of each region per sample (`objective.views.n_views` must equal it), None: any;
    masks: hides parts of each view (`objective.views.masking` must be set);
    masks_if: the name of a loss argument that, when > 0, needs masks (DINO's `ibot_weight`), or None;
    rules: shape rules of `models/rules.py` its own arguments obey (the MAE decoder's: "decoder");
    mask_cell_is_token: one mask cell per patch token (`masking.patch_size` must equal `model.patch_size`);
    trains_decoder: False → a CNN backbone's own decoder is frozen (unused by the loss);
    reconstructs: has `reconstruct(batch, backbone) -> {"original", "masked", "reconstruction"}` for pictures;
    teacher: keeps an EMA teacher of the backbone: `attach_teacher(backbone)` when the module is built,
        `update_teacher(backbone, total_steps)` after every optimiser step, `teacher_backbone` (what is exported);
    bounds: {argument: {"ge" | "gt" | "le" | "lt": number}}, checked with the config before anything is built."""

    backbone: Literal["tokens", "cnn", "any"]
    views: int | None = 1
    masks: bool = False
    masks_if: str | None = None
    mask_cell_is_token: bool = False
    trains_decoder: bool = True
    reconstructs: bool = False
    teacher: bool = False
    bounds: dict = field(default_factory=dict)
    rules: tuple = ()
