"""Segmentation networks for fine-tuning, from a `voxfm export` or from random initialisation; each backbone
family's adapter (`models/adapters/`) builds its segmenter and loads the export into it:

- ViT export → MONAI `UNETR` with the exported ViT as its encoder (`UNETR.vit`, strict load).
- ResEnc export → the full ResEnc UNet (nnU-Net's `ResidualEncoderUNet`): encoder and decoder from the
  export, a new segmentation head (`decoder.seg_layers`) for this task's classes.
- Primus export → the whole Primus, a new patch decoder.
- `format=full` export → its backbone built from its stored config (the allowlist) and described as the family's
  own export would describe it.
- `backbone: none` → the same network from random initialisation (the scratch arm).
An architecture no declared backbone has is an error, never a fallback.
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path

import torch

from voxfm.data.ingest.safe_files import read_small_text
from voxfm.pretrain.config.declarations import backbone_class_for, declared_backbones
from voxfm.pretrain.errors import ConfigError, config_errors
from voxfm.pretrain.training.sizes import check_arguments, sized


def architectures() -> tuple[str, ...]:
    """The architectures voxfm's backbones declare (`declared_backbones`): the names an export may carry."""
    return tuple(sorted({d.declaration.architecture for d in declared_backbones().values()}, reverse=True))


def read_export(folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """An export folder → (its description: architecture, kwargs, ...; its backbone's weights)."""
    path = Path(folder)
    if (path / "full.json").is_file() and (path / "model.safetensors").is_file():
        return _read_full(path, folder)
    if not (path / "backbone.json").is_file() or not (path / "backbone.safetensors").is_file():
        raise ConfigError(
            f"backbone={folder}: expected a `voxfm export` folder (backbone.json + "
            "backbone.safetensors, or format=full's full.json + model.safetensors), or backbone=none"
        )
    try:
        meta = json.loads(read_small_text(path / "backbone.json"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"backbone={folder}: backbone.json unreadable ({type(err).__name__}: {err})") from None
    check_export_meta(meta, f"backbone={folder}: backbone.json")
    from voxfm.pretrain.training.checkpoints import read_safetensors

    return meta, finite(read_safetensors(path / "backbone.safetensors", f"backbone={folder}"), f"backbone={folder}")


def finite(weights: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Weights with a NaN or an infinity would fine-tune to Dice 0 without a word: refused, naming the tensor."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"{where}: weight {name} holds non-finite values (NaN or infinity)")
    return weights


def _read_full(path: Path, folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A format=full export: the backbone its stored config names (through the allowlist, never `instantiate`),
    with the weights of the model it exports (the teacher for self-distillation), described as the family's own
    export would describe it."""
    from voxfm.pretrain.export.formats import exported_weights
    from voxfm.pretrain.export.full import full_export_backbone

    meta, backbone, state = full_export_backbone(path, f"backbone={folder}")
    weights, description = exported_weights(finite(state, f"backbone={folder}"), backbone, None)
    return {**meta, **description}, weights


def check_export_meta(meta, where: str) -> None:
    """backbone.json is data: a known architecture and a mapping of kwargs, from which the segmenter reads the
    values it needs by name (it never resolves a class the file names)."""
    known = architectures()
    if not isinstance(meta, dict) or meta.get("architecture") not in known:
        got = meta.get("architecture") if isinstance(meta, dict) else meta
        raise ConfigError(f"{where}: architecture={got!r}; allowed: {', '.join(known)}")
    if not isinstance(meta.get("kwargs"), dict):
        raise ConfigError(f"{where}: kwargs is missing or not a mapping")
    check_arguments(meta["kwargs"], f"{where}: kwargs")


def build_segmenter(architecture: str, kwargs: dict, n_classes: int, crop_size, unetr: dict) -> torch.nn.Module:
    """The fine-tuning network of `architecture` from an export's `kwargs` (random weights); it carries its
    adapter as `voxfm_adapter` (what `encoder_parameters` asks)."""
    adapter = backbone_class_for(architecture).adapter
    with config_errors():  # the export's kwargs do not fit this fine-tune's settings (crop, patch)
        net = adapter.segmenter(kwargs, n_classes, crop_size, unetr)
    net.voxfm_adapter = adapter
    return net


def segmenter_with_weights(
    meta: dict, weights: dict[str, torch.Tensor], n_classes: int, crop_size, unetr: dict, what: str
) -> torch.nn.Module:
    """The segmentation network of an exported backbone (`meta`: architecture and kwargs) with its weights in the
    encoder (and where the family keeps it, the decoder); the pretraining head is replaced by this task's."""
    build = partial(build_segmenter, meta["architecture"], meta["kwargs"], n_classes, crop_size, unetr)
    described = sized(build, what)  # on the meta device: a crafted backbone.json allocates nothing
    with config_errors(), warnings.catch_warnings():  # keys and shapes against the file's tensors, still on meta
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        described.voxfm_adapter.load_pretrained(described, weights, what)
    net = build()
    with config_errors():  # the export does not fit the network this config builds
        net.voxfm_adapter.load_pretrained(net, weights, what)
    return net


def segmenter_from_export(folder: str, n_classes: int, crop_size, unetr: dict) -> tuple[torch.nn.Module, dict]:
    meta, weights = read_export(folder)
    return segmenter_with_weights(meta, weights, n_classes, crop_size, unetr, f"backbone={folder}"), meta


def encoder_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What `freeze_encoder=true` freezes: UNETR's ViT, Primus's tokeniser and EVA encoder, the ResEnc encoder."""
    return list(net.voxfm_adapter.encoder_parameters(net))
