"""The weights and description of a backbone's export, made by its family's adapter (`models/adapters/`), and
what nnU-Net's plans need beside them (format=nnunet).

voxfm's tensors are [C, X, Y, Z] in RAS; nnU-Net (NibabelIOWithReorient or SimpleITKIO) hands the network
[C, Z, Y, X]. An adapter's `nnunet_axes` transposes every kernel's spatial axes (and reverses kernel sizes, strides,
spacing and patch size; for Primus also reorders its position embeddings and RoPE blocks), so nnU-Net's network
computes exactly voxfm's function on its own axis order and no pretrained feature is lost to an axis mix-up.
"""

from __future__ import annotations

import torch

from voxfm.pretrain.errors import config_errors


def exported_weights(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
    """A backbone's weights `state` → (the weights as exported, the description: architecture, class, kwargs...);
    `backbone` (built from the same config) supplies the architecture's arguments."""
    with config_errors():  # e.g. inflating channels of a backbone that has more than one
        return type(backbone).adapter.export_weights(state, backbone, in_channels)


def backbone_weights(backbone, in_channels: int | None = None) -> tuple[dict, dict]:
    """A built voxfm backbone → (its weights as exported, its description: architecture, class, kwargs...)."""
    return exported_weights(backbone.state_dict(), backbone, in_channels)


PLANS_NAME = "nnUNetPlans_voxfm"  # a plans file of its own: nnU-Net's 3d_fullres plans and data stay as planned


def nnunet_plans_fragment(
    description: dict, kwargs: dict, patch_size, spacing, normalisation: dict | None, modalities
) -> dict:
    """What to merge into a copy of nnU-Net's plans (`PLANS_NAME`: a configuration inheriting 3d_fullres) and into
    dataset.json; description: the export's (its dotted nnU-Net class and the kwargs nnU-Net imports), kwargs: in
    nnU-Net's axis order.

    The plans' `transpose_forward` is pinned to the identity: nnU-Net's planner otherwise puts the coarsest axis
    first, and the network would see [Y, Z, X] where the weights were transposed for [Z, Y, X]. The configuration's
    `data_identifier` is its own, so its preprocessed data never overwrite 3d_fullres's."""
    arch = {k: v for k, v in kwargs.items() if k not in ("input_channels", "num_classes", "deep_supervision")}
    schemes = {
        "CT": "CTNormalization",
        "MR": "ZScoreNormalization",
        "PET": "ZScoreNormalization",
        "unknown": "ZScoreNormalization",
    }
    return {
        "dataset_json": {"overwrite_image_reader_writer": "NibabelIOWithReorient"},
        "plans": {
            "plans_name": PLANS_NAME,
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {
                "3d_fullres_voxfm": {
                    "inherits_from": "3d_fullres",
                    "data_identifier": f"{PLANS_NAME}_3d_fullres_voxfm",
                    "patch_size": list(reversed(patch_size)),
                    "spacing": list(reversed(spacing)),
                    "architecture": {
                        "network_class_name": description["class"],
                        "arch_kwargs": arch,
                        "_kw_requires_import": description["kwargs_requires_import"],
                    },
                }
            },
        },
        "normalization_schemes_by_modality": {m: schemes[m] for m in (modalities or {"CT": 0, "MR": 0})},
        "voxfm_normalisation": normalisation,
        "axis_order": "nnU-Net's [C, Z, Y, X] of the RAS-reoriented image; these weights are transposed for it",
        "input_channels": kwargs["input_channels"],
    }
