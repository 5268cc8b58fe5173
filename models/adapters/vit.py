"""The ViT's adapters: exported as MONAI's `ViT` (names already MONAI's, so it also loads into `UNETR(...).vit`),
fine-tuned inside MONAI's UNETR, and what the model card says about a class token."""

from __future__ import annotations

import torch

from voxfm.models.adapters.common import clone_state, inflate
from voxfm.models.weights import load_strict

CLASS_TOKEN_NOTE = (
    "MONAI's segmentation ViT (`classification=False`, what UNETR builds) has none, so this export leaves it out and "
    "loads strictly without it. The class token took part in every layer's attention, so without it the patch "
    "features shift somewhat: fine-tuning absorbs that. `format=full` keeps it."
)


class ViTAdapter:
    architecture = "vit"

    @staticmethod
    def export_weights(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
        """The ViT's weights as MONAI's `ViT` holds them, plus MONAI's unused cross-attention norms."""
        weights = clone_state(state)
        weights.pop("cls_token", None)  # a segmentation ViT (classification=False) has none; the model card says so
        hidden = backbone.hidden_size
        for i in range(backbone.num_layers):
            weights[f"blocks.{i}.norm_cross_attn.weight"] = torch.ones(hidden)
            weights[f"blocks.{i}.norm_cross_attn.bias"] = torch.zeros(hidden)
        kwargs = backbone.monai_kwargs()
        inflate(weights, ["patch_embedding.patch_embeddings.weight"], kwargs, "in_channels", in_channels)
        name = backbone.declaration.export_class
        return weights, {
            "architecture": "vit",
            "class": name,
            "kwargs": kwargs,
            "kwargs_requires_import": [],
            "monai_class": name,
            "monai_kwargs": kwargs,
            "patch_size": kwargs["patch_size"],
            "img_size": kwargs["img_size"],
        }

    @staticmethod
    def segmenter(kwargs: dict, n_classes: int, crop_size, unetr: dict) -> torch.nn.Module:
        """MONAI's UNETR around a ViT of the exported (MONAI) `kwargs`."""
        from monai.networks.nets import UNETR

        if list(kwargs["patch_size"]) != [16, 16, 16]:
            raise ValueError(
                f"UNETR needs a patch-16 ViT; this backbone has patch {kwargs['patch_size']} (a patch-8 "
                "ViT has no segmentation network in voxfm; pretrain Primus, model=primus_*, instead)"
            )
        return UNETR(
            in_channels=kwargs["in_channels"],
            out_channels=n_classes,
            img_size=tuple(crop_size),
            hidden_size=kwargs["hidden_size"],
            mlp_dim=kwargs["mlp_dim"],
            num_heads=kwargs["num_heads"],
            proj_type="conv",
            **unetr,
        )

    @staticmethod
    def load_pretrained(net: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
        load_strict(net.vit, weights, what)

    @staticmethod
    def encoder_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
        return list(net.vit.parameters())

    @staticmethod
    def card_notes(meta: dict, export_format: str) -> list[str]:
        if not meta["config"]["model"].get("class_token"):
            return []
        kept = "It is kept here as `backbone.cls_token`." if export_format == "full" else CLASS_TOKEN_NOTE
        return [
            "",
            "## Class token",
            "The ViT was pretrained with a class token (the summary the self-distillation loss reads). " + kept,
        ]
