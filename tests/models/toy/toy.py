"""A toy backbone, the way a user adds one: this module (network, declaration, adapter) and `conf/model/toy.yaml`,
no other file of voxfm; `VOXFM_BACKBONES=tests.models.toy.toy` lets stored configs and exports name it.

A two-stage CNN with a decoder: nothing worth pretraining, but it walks every path a backbone walks (declaration,
config checks, the step, checkpoints, export, fine-tuning).
"""

from __future__ import annotations

import torch
from torch import nn

from voxfm.models.adapters.common import clone_state, keep_heads
from voxfm.models.spec import BackboneDeclaration, BackboneSpec
from voxfm.models.weights import load_strict


class ToyAdapter:
    architecture = "toy"

    @staticmethod
    def export_weights(state: dict, backbone, in_channels: int | None) -> tuple[dict, dict]:
        if in_channels not in (None, backbone.kwargs["in_channels"]):
            raise ValueError(f"in_channels={in_channels}: the toy backbone does not inflate channels")
        return clone_state(state), {
            "architecture": "toy",
            "class": backbone.declaration.export_class,
            "kwargs": dict(backbone.kwargs),
            "kwargs_requires_import": [],
        }

    @staticmethod
    def segmenter(kwargs: dict, n_classes: int, crop_size, unetr: dict) -> nn.Module:
        return ToyBackbone(**{**kwargs, "out_channels": n_classes})

    @staticmethod
    def load_pretrained(net: nn.Module, weights: dict, what: str) -> None:
        load_strict(net, keep_heads(net, weights, "head."), what)

    @staticmethod
    def encoder_parameters(net: nn.Module) -> list[nn.Parameter]:
        return list(net.encoder.parameters())

    @staticmethod
    def card_notes(meta: dict, export_format: str) -> list[str]:
        return ["", "## Toy", "A test backbone: its weights are worth nothing."]


class ToyBackbone(nn.Module):
    """x: [B, in_channels, X, Y, Z] (X, Y, Z even) → [B, out_channels, X, Y, Z]."""

    declaration = BackboneDeclaration(
        kind="cnn",
        architecture="toy",
        export_class="tests.models.toy.toy.ToyBackbone",
        formats=("full",),
        decoder=True,
        bounds={"in_channels": {"ge": 1}},
        rules=("unet_stride",),  # the crop: even
    )
    adapter = ToyAdapter

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features_per_stage: list[int] = (4, 8)):
        super().__init__()
        self.kwargs = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features_per_stage": list(features_per_stage),
        }
        a, b = features_per_stage
        self.encoder = nn.ModuleList(
            [
                nn.Sequential(nn.Conv3d(in_channels, a, 3, padding=1), nn.GELU()),
                nn.Sequential(nn.Conv3d(a, b, 3, stride=2, padding=1), nn.GELU()),
            ]
        )
        self.up = nn.ConvTranspose3d(b, a, 2, stride=2)
        self.head = nn.Conv3d(2 * a, out_channels, 1)

    def encode(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([skips[0], self.up(skips[1])], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[-1].mean(dim=(2, 3, 4))

    def repeated_blocks(self) -> list[nn.Module]:
        return list(self.encoder)

    def freeze_decoder(self) -> None:
        self.up.requires_grad_(False)
        self.head.requires_grad_(False)

    @property
    def spec(self) -> BackboneSpec:
        a, b = self.kwargs["features_per_stage"]
        return BackboneSpec(self.kwargs["in_channels"], b, stage_channels=(a, b))
