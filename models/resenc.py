"""nnU-Net's residual-encoder UNet (`dynamic_network_architectures`), built from preset arguments.

`ResEncUNet` *is* `ResidualEncoderUNet` (a subclass adding no parameters), so its `state_dict` is
the one nnU-Net v2 / nnssl build and load by name — aliased keys included (`decoder.encoder.*`
repeats the encoder; each conv also appears as `all_modules.0`). It adds what the objectives need:
the encoder with an optional visibility mask applied after the stem and after every residual block
(sparse-convolution emulation for masked modelling: hidden regions stay exactly zero), the decoder,
and pooled bottleneck features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from voxfm.models.adapters.resenc import ResEncAdapter
from voxfm.models.rules import stage_counts
from voxfm.models.spec import BackboneDeclaration, BackboneSpec


def resenc_kwargs(
    in_channels: int,
    out_channels: int,
    features_per_stage,
    n_blocks_per_stage,
    n_conv_per_stage_decoder,
    strides=None,
    kernel_size: int = 3,
) -> dict:
    """The keyword arguments of `ResidualEncoderUNet` for a preset, with nnU-Net's 3D defaults
    (InstanceNorm with affine, LeakyReLU, conv bias, first stage at full resolution)."""
    n = len(features_per_stage)
    problem = stage_counts(features_per_stage, n_blocks_per_stage, n_conv_per_stage_decoder)
    if problem:
        raise ValueError(problem)
    strides = [1] + [2] * (n - 1) if strides is None else list(strides)
    return {
        "input_channels": in_channels,
        "n_stages": n,
        "features_per_stage": list(features_per_stage),
        "conv_op": nn.Conv3d,
        "kernel_sizes": [[kernel_size] * 3] * n,
        "strides": [[s] * 3 for s in strides],
        "n_blocks_per_stage": list(n_blocks_per_stage),
        "num_classes": out_channels,
        "n_conv_per_stage_decoder": list(n_conv_per_stage_decoder),
        "conv_bias": True,
        "norm_op": nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
        "deep_supervision": False,
    }


class ResEncUNet(ResidualEncoderUNet):
    """x: [B, in_channels, X, Y, Z] → [B, out_channels, X, Y, Z]; X, Y, Z divisible by `total_stride`."""

    declaration = BackboneDeclaration(
        kind="cnn",
        architecture="resenc",
        export_class="dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        formats=("monai", "nnunet", "nnssl", "full"),
        decoder=True,
        unpicklable="nnU-Net's ResEnc blocks cannot be pickled",
        bounds={"in_channels": {"ge": 1}, "out_channels": {"ge": 1}, "kernel_size": {"ge": 1}},
        rules=("unet_stride", "unet_stages"),
    )
    adapter = ResEncAdapter

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features_per_stage: tuple[int, ...] = (32, 64, 128, 256, 320, 320),
        n_blocks_per_stage: tuple[int, ...] = (1, 3, 4, 6, 6, 6),
        n_conv_per_stage_decoder: tuple[int, ...] = (1, 1, 1, 1, 1),
        strides: tuple[int, ...] | None = None,
        kernel_size: int = 3,
    ):
        self.preset = resenc_kwargs(
            in_channels,
            out_channels,
            features_per_stage,
            n_blocks_per_stage,
            n_conv_per_stage_decoder,
            strides,
            kernel_size,
        )
        super().__init__(**self.preset)
        self.apply(ResidualEncoderUNet.initialize)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stage_strides = [s[0] for s in self.preset["strides"]]
        # Without deep supervision only the last segmentation layer runs; the others stay in the state_dict
        # (nnU-Net expects them) but are frozen, so DDP finds no unused trainable parameter.
        for layer in self.decoder.seg_layers[:-1]:
            layer.requires_grad_(False)

    def freeze_decoder(self) -> None:
        """For objectives that train only the encoder (contrastive): the decoder's own parts stop learning
        (`decoder.encoder` is the encoder itself, so it is left alone)."""
        for part in (self.decoder.stages, self.decoder.transpconvs, self.decoder.seg_layers):
            part.requires_grad_(False)

    def repeated_blocks(self) -> list[nn.Module]:
        """The units speed-ups wrap from outside: the residual blocks of every encoder stage."""
        return [block for stage in self.encoder.stages for block in stage.blocks]

    @property
    def total_stride(self) -> int:
        out = 1
        for s in self.stage_strides:
            out *= s
        return out

    @property
    def spec(self) -> BackboneSpec:
        features = tuple(self.preset["features_per_stage"])
        return BackboneSpec(self.in_channels, 2 * features[-1], stage_channels=features)

    def encode(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> list[torch.Tensor]:
        """x: [B, C, X, Y, Z]; visible: [B, 1, X, Y, Z] (1 = visible) or None → skips, one per stage,
        [B, C_s, X/r_s, Y/r_s, Z/r_s]. With `visible`, the input and every block's output are zeroed where
        any voxel of the cell is hidden, so nothing computed from hidden voxels reaches a visible cell."""
        keep = None
        if visible is not None:
            x = x * visible.to(x.dtype)
            keep = visible
        x = self.encoder.stem(x)
        if keep is not None:
            x = x * keep.to(x.dtype)  # 0/1: exact in any dtype, and a bf16 autocast stream stays bf16
        skips = []
        for stage in self.encoder.stages:
            for block in stage.blocks:
                x = block(x)
                if keep is not None:
                    if keep.shape[2:] != x.shape[2:]:
                        keep = -F.adaptive_max_pool3d(-keep, x.shape[2:])  # min-pool: hidden if any voxel hidden
                    x = x * keep.to(x.dtype)
            skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(skips)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x → bottleneck features [B, 2 * features_per_stage[-1]]: spatial mean and max. The mean alone is
        nearly the same for every input: each residual branch ends in an instance norm, which centres every
        channel of every sample, so only the max (and the nonlinearity) keep what tells inputs apart."""
        bottleneck = self.encode(x)[-1].flatten(2)
        return torch.cat([bottleneck.mean(dim=2), bottleneck.amax(dim=2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
