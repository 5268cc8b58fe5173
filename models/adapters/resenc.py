"""The ResEnc UNet's adapters: exported as nnU-Net's `ResidualEncoderUNet` (dynamic_network_architectures), built
from JSON kwargs with classes as dotted names, as nnU-Net's plans write them; nnU-Net's axis order and nnssl's
plan and keys; fine-tuned as the whole UNet with a new segmentation head."""

from __future__ import annotations

import torch

from voxfm.models.adapters.common import clone_state, inflate, keep_heads, transpose_kernels
from voxfm.models.weights import load_strict

REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
SEG_HEAD = "decoder.seg_layers."  # the segmentation layers: replaced by the task's
# nnssl's DynamicArchitecturePlans fields, in its order: ResidualEncoderUNet's arguments but input_channels and
# num_classes (and deep_supervision), which nnU-Net supplies
DYNAMIC_KWARGS = (
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_blocks_per_stage",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
)
# "ResEncL" as nnU-Net's get_network_from_name builds it, in the form of DynamicArchitecturePlans.serialize()
RESENC_L = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1] * 5,
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.modules.activation.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def _dotted(value):
    return f"{value.__module__}.{value.__qualname__}" if isinstance(value, type) else value


class ResEncAdapter:
    architecture = "resenc"
    # where nnU-Net finds stem, encoder, input projection and learnt position embedding in network_weights
    nnssl_keys = {
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        "key_to_lpe": None,
    }
    nnssl_trainer = ""  # nnU-Net's default pretrained trainer

    @staticmethod
    def export_weights(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
        weights = clone_state(state)
        kwargs = {k: _dotted(v) for k, v in backbone.preset.items()}
        # the stem conv and its aliases (all_modules.0, decoder.encoder.*)
        stem = [k for k, v in weights.items() if ".stem.convs.0." in k and k.endswith("weight") and v.ndim == 5]
        inflate(weights, stem, kwargs, "input_channels", in_channels)
        return weights, {
            "architecture": "resenc",
            "class": backbone.declaration.export_class,
            "kwargs": kwargs,
            "kwargs_requires_import": REQUIRES_IMPORT,
            "total_stride": backbone.total_stride,
        }

    @staticmethod
    def nnunet_axes(weights: dict[str, torch.Tensor], kwargs: dict) -> tuple[dict, dict]:
        """[.., X, Y, Z] kernels → [.., Z, Y, X], and the per-axis kwargs reversed."""
        kwargs = dict(kwargs)
        for key in ("kernel_sizes", "strides"):
            kwargs[key] = [list(reversed(s)) for s in kwargs[key]]
        return transpose_kernels(weights), kwargs

    @staticmethod
    def nnssl_plans(kwargs: dict) -> dict:
        """nnssl's ArchitecturePlans: "ResEncL" where the arguments are nnU-Net's preset, else `ResidualEncoderUNet`
        with DynamicArchitecturePlans' kwargs (nnU-Net's axis order)."""
        dynamic = {k: kwargs[k] for k in DYNAMIC_KWARGS}
        if dynamic == RESENC_L:
            return {"arch_class_name": "ResEncL", "arch_kwargs": None, "arch_kwargs_requiring_import": None}
        return {
            "arch_class_name": "ResidualEncoderUNet",
            "arch_kwargs": dynamic,
            "arch_kwargs_requiring_import": [k for k in REQUIRES_IMPORT if dynamic[k] is not None],
        }

    @staticmethod
    def segmenter(kwargs: dict, n_classes: int, crop_size, unetr: dict) -> torch.nn.Module:
        """The full ResEnc UNet of the exported (nnU-Net) `kwargs`, with `n_classes` outputs."""
        from voxfm.models.resenc import ResEncUNet

        return ResEncUNet(
            in_channels=kwargs["input_channels"],
            out_channels=n_classes,
            features_per_stage=kwargs["features_per_stage"],
            n_blocks_per_stage=kwargs["n_blocks_per_stage"],
            n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"],
            strides=[s[0] for s in kwargs["strides"]],
            kernel_size=kwargs["kernel_sizes"][0][0],
        )

    @staticmethod
    def load_pretrained(net: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
        """Encoder and decoder from the export; the segmentation layers are this task's."""
        load_strict(net, keep_heads(net, weights, SEG_HEAD), what)

    @staticmethod
    def encoder_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
        return list(net.encoder.parameters())

    @staticmethod
    def card_notes(meta: dict, export_format: str) -> list[str]:
        return []
