"""format=nnssl: the checkpoint nnssl writes, for nnU-Net's pretrained fine-tuning to take as it takes nnssl's.

nnssl (MIC-DKFZ/nnssl) saves `checkpoint_final.pth` = {network_weights, init_args, trainer_name,
nnssl_adaptation_plan} (`AbstractTrainer.save_checkpoint`; its release tool `add_adaptation_plan.py` drops the
optimiser and logging state and writes the plan again as `adaptation_plan.json`). The plan is
`AdaptationPlan.serialize()` (`adaptation_planning/adaptation_plan.py`): architecture_plans {arch_class_name,
arch_kwargs, arch_kwargs_requiring_import}, pretrain_plan (a `Plan` holding one `ConfigurationPlan`),
pretrain_num_input_channels, recommended_downstream_patchsize, key_to_encoder, key_to_stem, keys_to_in_proj,
key_to_lpe. nnU-Net's `nnUNetv2_preprocess_like_nnssl` (`experiment_planning/like_nnssl.py`) reads every one of
them; `nnUNetv2_train_pretrained` (`training/nnUNetTrainer/pretraining/pretrainedTrainer.py`) builds a preset by name
(`PrimusS/B/M/L`, `ResEncL`: `utilities/get_network_via_name.py`) or `ResidualEncoderUNet` from its kwargs, and
copies the stem, the encoder and the position embedding from `network_weights`.

The weights are in nnU-Net's axis order and every size is given in it (the backbone adapter's `nnunet_axes`), so
nnU-Net's network computes voxfm's function on nnU-Net's [C, Z, Y, X]; its adapter also gives the architecture plan
(`nnssl_plans`: a preset's name where it is one) and where nnU-Net finds stem and encoder (`nnssl_keys`).
"""

from __future__ import annotations

import torch


def pretrain_plan(
    patch_size: list[int], spacing: list[float] | None, normalisation: dict | None, channels: int
) -> dict:
    """nnssl's Plan with its one ConfigurationPlan, describing what voxfm's pretraining saw; patch_size and spacing
    in nnU-Net's axis order. nnU-Net reads the spacing (`-am like_pretrained`) and the patch size from it."""
    # nnssl's spacing styles are onemmiso, median and noresample; voxfm resamples to one fixed spacing
    style = "noresample" if spacing is None else "onemmiso" if all(s == 1 for s in spacing) else "fixed"
    scheme = "voxfm: " + (
        "; ".join(f"{m} {n['scheme']}" for m, n in normalisation.items()) if normalisation else "not recorded"
    )
    config = {
        "data_identifier": "voxfm",
        "preprocessor_name": "voxfm shard",
        "spacing_style": style,
        "normalization_schemes": [scheme] * channels,
        "use_mask_for_norm": [False] * channels,
        # the nnU-Net call closest to voxfm shard's separable linear resampling (labels: nearest)
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 1, "force_separate_z": None},
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {"is_seg": True, "order": 0, "order_z": 0, "force_separate_z": None},
        "spacing": spacing[::-1] if spacing else None,
        "patch_size": patch_size,
    }
    return {
        "dataset_name": "voxfm",
        "plans_name": "voxfmPlans",
        "original_median_spacing_after_transp": config["spacing"],  # every volume is resampled to it
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"voxfm": config},
        "experiment_planner_used": "voxfm shard",
    }


def nnssl_checkpoint(
    adapter,
    weights: dict[str, torch.Tensor],
    description: dict,
    crop_size: list[int],
    spacing: list[float] | None,
    normalisation: dict | None,
    trainer_name: str,
    init_args: dict,
) -> dict:
    """A backbone's exported weights and description (`formats.exported_weights`) → the dict nnssl saves as
    `checkpoint_final.pth`. adapter: the backbone's (`models.protocols.NNUNetAdapter`); crop_size: the pretraining
    crop, [X, Y, Z]."""
    weights, kwargs = adapter.nnunet_axes(weights, description["kwargs"])
    # Primus's position embedding is learnt for its input_shape, which nnU-Net must keep; a CNN takes any crop
    patch = list(kwargs["input_shape"]) if "input_shape" in kwargs else list(crop_size[::-1])
    plan = {
        "architecture_plans": adapter.nnssl_plans(kwargs),
        "pretrain_plan": pretrain_plan(patch, spacing, normalisation, kwargs["input_channels"]),
        "pretrain_num_input_channels": kwargs["input_channels"],
        "recommended_downstream_patchsize": patch,
        **adapter.nnssl_keys,
    }
    return {
        "network_weights": weights,
        "init_args": init_args,
        "trainer_name": trainer_name,
        "nnssl_adaptation_plan": plan,
    }
