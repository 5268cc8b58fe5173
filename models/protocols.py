"""The contracts a backbone and its adapter keep, as `typing.Protocol`s: what the objectives, the training module,
export, fine-tuning and the model card call. `tests/models/test_backbones.py` checks every declared backbone
against them. Shapes: x [B, C, X, Y, Z]; tokens [B, N, D]; ids [B, N] (positions on `spec.grid`)."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch


@runtime_checkable
class BackboneAdapter(Protocol):
    """Everything a backbone family brings besides its network (`models/adapters/`)."""

    architecture: ClassVar[str]  # the name an export's backbone.json carries (= the declaration's)

    def export_weights(self, state: dict, backbone, in_channels: int | None) -> tuple[dict, dict]:
        """The backbone's weights `state` as its default export format holds them, inflated to `in_channels`
        where asked, and their description (architecture, class, kwargs, kwargs_requires_import, ...)."""

    def segmenter(self, kwargs: dict, n_classes: int, crop_size, unetr: dict) -> torch.nn.Module:
        """The fine-tuning network of an export's `kwargs`, with `n_classes` outputs."""

    def load_pretrained(self, net: torch.nn.Module, weights: dict, what: str) -> None:
        """The exported weights into `segmenter(...)`'s network, strictly but for this task's new head."""

    def encoder_parameters(self, net: torch.nn.Module) -> list[torch.nn.Parameter]:
        """What `freeze_encoder=true` freezes in `segmenter(...)`'s network."""

    def card_notes(self, meta: dict, export_format: str) -> list[str]:
        """Model-card lines of its own (class token, other homes), appended to the card."""


@runtime_checkable
class NNUNetAdapter(BackboneAdapter, Protocol):
    """The adapter of a backbone that exports as `format=nnunet` or `nnssl`: nnU-Net builds it."""

    nnssl_keys: ClassVar[dict]  # key_to_encoder, key_to_stem, keys_to_in_proj, key_to_lpe
    nnssl_trainer: ClassVar[str]  # the `-tr` flag of nnUNetv2_train_pretrained it needs, or ""

    def nnunet_axes(self, weights: dict, kwargs: dict) -> tuple[dict, dict]:
        """Weights and kwargs from voxfm's [C, X, Y, Z] to nnU-Net's [C, Z, Y, X]: the same function."""

    def nnssl_plans(self, kwargs: dict) -> dict:
        """nnssl's ArchitecturePlans for `kwargs` (nnU-Net's axis order)."""


@runtime_checkable
class Backbone(Protocol):
    """Every backbone: `declaration` (models/spec.py), `adapter`, `spec`, a pooled feature and its blocks."""

    adapter: ClassVar[type]

    @property
    def spec(self): ...

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x → [B, spec.feature_dim]."""

    def repeated_blocks(self) -> list[torch.nn.Module]:
        """The blocks activation checkpointing and compile wrap one by one, in depth order."""


@runtime_checkable
class TokenBackbone(Backbone, Protocol):
    """declaration.kind == "tokens": patch tokens on `spec.grid`, encoded on any subset of positions."""

    def embed(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """x → tokens [B, N, D] (only the positions `ids` when given)."""

    def encode(self, tokens: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, N, D] → encoded [B, N, D]."""

    def features(self, x: torch.Tensor, masks=None, mask_token=None) -> tuple:
        """x → (class token [B, D] or pooled, patch tokens [B, N, D]); masked positions take `mask_token`."""


@runtime_checkable
class CNNBackbone(Backbone, Protocol):
    """declaration.kind == "cnn": encoder stages (skips) and a decoder."""

    def encode(self, x: torch.Tensor, visible=None) -> list[torch.Tensor]:
        """x → the skips of every stage; `visible` masks the input cells (sparse masked modelling)."""

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """skips → [B, out_channels, X, Y, Z]."""

    def freeze_decoder(self) -> None: ...
