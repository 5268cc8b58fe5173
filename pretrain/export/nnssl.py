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

The weights are in nnU-Net's axis order and every size is given in it (see `formats.to_nnunet_axes` and
`formats.primus_to_nnunet_axes`), so nnU-Net's network computes voxfm's function on nnU-Net's [C, Z, Y, X].
"""

from __future__ import annotations

import torch

from voxfm.models.primus import PRESETS, Primus
from voxfm.pretrain.export.formats import REQUIRES_IMPORT, primus_to_nnunet_axes, to_nnunet_axes

# nnssl's DynamicArchitecturePlans fields, in its order: ResidualEncoderUNet's arguments but input_channels and
# num_classes (and deep_supervision), which nnU-Net supplies
DYNAMIC_KWARGS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_blocks_per_stage",
                  "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                  "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
# "ResEncL" as nnU-Net's get_network_from_name builds it, in the form of DynamicArchitecturePlans.serialize()
RESENC_L = {
    "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1] * 5, "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.modules.activation.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}
# "PrimusS/B/M/L" as get_network_from_name builds them (patch 8, nnssl's init_values=0.1 and inner attention norm;
# the input shape is the downstream patch size); drop rates change no weight, so they are not compared
PRIMUS_PRESETS = {
    f"Primus{size}": {"embed_dim": dim, "eva_depth": depth, "eva_numheads": heads, "patch_embed_size": [8, 8, 8],
                      "num_register_tokens": 0, "use_rot_pos_emb": True, "use_abs_pos_embed": True,
                      "mlp_ratio": 4 * 2 / 3, "scale_attn_inner": True}
    for size, (depth, heads, dim) in PRESETS.items()
}
PRIMUS_CLASS = Primus.declaration.export_class  # nnU-Net's Primus, for any other size
KEYS = {  # where nnU-Net finds stem, encoder, input projection and learnt position embedding in network_weights
    "resenc": {"key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
               "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
               "key_to_lpe": None},
    "primus": {"key_to_encoder": "eva", "key_to_stem": "down_projection", "keys_to_in_proj": ["down_projection.proj"],
               "key_to_lpe": "eva.pos_embed"},
}
NNUNET_AXES = {"resenc": to_nnunet_axes, "primus": primus_to_nnunet_axes}


def architecture_plans(architecture: str, kwargs: dict) -> dict:
    """nnssl's ArchitecturePlans for a backbone's arguments in nnU-Net's axis order: its preset name where it is one,
    else `ResidualEncoderUNet` with DynamicArchitecturePlans' kwargs, or Primus's class with its own."""
    if architecture == "resenc":
        dynamic = {k: kwargs[k] for k in DYNAMIC_KWARGS}
        if dynamic == RESENC_L:
            return {"arch_class_name": "ResEncL", "arch_kwargs": None, "arch_kwargs_requiring_import": None}
        return {"arch_class_name": "ResidualEncoderUNet", "arch_kwargs": dynamic,
                "arch_kwargs_requiring_import": [k for k in REQUIRES_IMPORT if dynamic[k] is not None]}
    own = {k: v for k, v in kwargs.items() if k not in ("input_channels", "num_classes")}
    for name, preset in PRIMUS_PRESETS.items():
        if all(own[k] == v for k, v in preset.items()) and own["init_values"] is not None:  # LayerScale weights
            return {"arch_class_name": name, "arch_kwargs": None, "arch_kwargs_requiring_import": None}
    return {"arch_class_name": PRIMUS_CLASS, "arch_kwargs": own, "arch_kwargs_requiring_import": []}


def pretrain_plan(patch_size: list[int], spacing: list[float] | None, normalisation: dict | None,
                  channels: int) -> dict:
    """nnssl's Plan with its one ConfigurationPlan, describing what voxfm's pretraining saw; patch_size and spacing
    in nnU-Net's axis order. nnU-Net reads the spacing (`-am like_pretrained`) and the patch size from it."""
    # nnssl's spacing styles are onemmiso, median and noresample; voxfm resamples to one fixed spacing
    style = "noresample" if spacing is None else "onemmiso" if all(s == 1 for s in spacing) else "fixed"
    scheme = "voxfm: " + ("; ".join(f"{m} {n['scheme']}" for m, n in normalisation.items()) if normalisation
                          else "not recorded")
    config = {
        "data_identifier": "voxfm", "preprocessor_name": "voxfm shard",
        "spacing_style": style,
        "normalization_schemes": [scheme] * channels, "use_mask_for_norm": [False] * channels,
        # the nnU-Net call closest to voxfm shard's separable linear resampling (labels: nearest)
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 1, "force_separate_z": None},
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {"is_seg": True, "order": 0, "order_z": 0, "force_separate_z": None},
        "spacing": spacing[::-1] if spacing else None, "patch_size": patch_size,
    }
    return {"dataset_name": "voxfm", "plans_name": "voxfmPlans",
            "original_median_spacing_after_transp": config["spacing"],  # every volume is resampled to it
            "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "configurations": {"voxfm": config},
            "experiment_planner_used": "voxfm shard"}


def nnssl_checkpoint(weights: dict[str, torch.Tensor], description: dict, crop_size: list[int],
                     spacing: list[float] | None, normalisation: dict | None, trainer_name: str,
                     init_args: dict) -> dict:
    """A backbone's exported weights and description (`formats.exported_weights`) → the dict nnssl saves as
    `checkpoint_final.pth`. crop_size: the pretraining crop, [X, Y, Z]."""
    architecture = description["architecture"]
    weights, kwargs = NNUNET_AXES[architecture](weights, description["kwargs"])
    # Primus's position embedding is learnt for its input_shape, which nnU-Net must keep; a CNN takes any crop
    patch = list(kwargs["input_shape"]) if "input_shape" in kwargs else list(crop_size[::-1])
    plan = {
        "architecture_plans": architecture_plans(architecture, kwargs),
        "pretrain_plan": pretrain_plan(patch, spacing, normalisation, kwargs["input_channels"]),
        "pretrain_num_input_channels": kwargs["input_channels"],
        "recommended_downstream_patchsize": patch,
        **KEYS[architecture],
    }
    return {"network_weights": weights, "init_args": init_args, "trainer_name": trainer_name,
            "nnssl_adaptation_plan": plan}
