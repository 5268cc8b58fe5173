"""Segmentation networks for fine-tuning, from a `voxfm export` (format=monai) or from random initialisation.

- ViT export → MONAI `UNETR` with the exported ViT as its encoder (`UNETR.vit`, strict load).
- ResEnc export → the full ResEnc UNet (nnU-Net's `ResidualEncoderUNet`): encoder and decoder from the
  export, a new segmentation head (`decoder.seg_layers`) for this task's classes.
- `backbone: none` → the same network from random initialisation (the scratch arm).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from voxfm.models.weights import load_strict
from voxfm.pretrain.config.declarations import declared_backbones
from voxfm.pretrain.errors import ConfigError, config_errors

SEG_HEAD = "decoder.seg_layers."  # ResEnc's segmentation layers: replaced by this task's
# the architectures voxfm's backbones declare (`declared_backbones`), the names backbone.json may carry
ARCHITECTURES = tuple(sorted({d.declaration.architecture for d in declared_backbones().values()}, reverse=True))


def read_export(folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(folder)
    if not (path / "backbone.json").is_file() or not (path / "backbone.safetensors").is_file():
        raise ConfigError(f"backbone={folder}: expected a `voxfm export` folder (backbone.json + "
                          "backbone.safetensors), or backbone=none")
    meta = json.loads((path / "backbone.json").read_text())
    check_export_meta(meta, f"backbone={folder}: backbone.json")
    return meta, load_file(str(path / "backbone.safetensors"))


def check_export_meta(meta, where: str) -> None:
    """backbone.json is data: a known architecture and a mapping of kwargs, from which `build_segmenter` reads
    the values it needs by name (it never resolves a class the file names)."""
    if not isinstance(meta, dict) or meta.get("architecture") not in ARCHITECTURES:
        got = meta.get("architecture") if isinstance(meta, dict) else meta
        raise ConfigError(f"{where}: architecture={got!r}; allowed: {', '.join(ARCHITECTURES)}")
    if not isinstance(meta.get("kwargs"), dict):
        raise ConfigError(f"{where}: kwargs is missing or not a mapping")


def build_segmenter(architecture: str, kwargs: dict, n_classes: int, crop_size, unetr: dict) -> torch.nn.Module:
    """architecture "vit": UNETR around a ViT of `kwargs` (MONAI ViT kwargs); "primus": Primus with a new head;
    "resenc": ResEncUNet kwargs."""
    if architecture == "vit":
        from monai.networks.nets import UNETR

        if list(kwargs["patch_size"]) != [16, 16, 16]:
            raise ConfigError(f"UNETR needs a patch-16 ViT; this backbone has patch {kwargs['patch_size']} (a patch-8 "
                              "ViT has no segmentation network in voxfm; pretrain Primus, model=primus_*, instead)")
        return UNETR(in_channels=kwargs["in_channels"], out_channels=n_classes, img_size=tuple(crop_size),
                     hidden_size=kwargs["hidden_size"], mlp_dim=kwargs["mlp_dim"], num_heads=kwargs["num_heads"],
                     proj_type="conv", **unetr)
    if architecture == "primus":  # the whole network as nnU-Net fine-tunes it: the pretrained encoder, a new decoder
        from voxfm.models.primus import Primus

        if list(kwargs["input_shape"]) != list(crop_size):  # nnU-Net too fine-tunes at the pretraining shape
            raise ConfigError(f"data.crop_size={list(crop_size)}: a Primus export fine-tunes at the input shape its "
                              f"position embedding was learnt for, {list(kwargs['input_shape'])}")
        return Primus(**{**kwargs, "num_classes": n_classes})
    from voxfm.models.resenc import ResEncUNet

    return ResEncUNet(in_channels=kwargs["input_channels"], out_channels=n_classes,
                      features_per_stage=kwargs["features_per_stage"], n_blocks_per_stage=kwargs["n_blocks_per_stage"],
                      n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"],
                      strides=[s[0] for s in kwargs["strides"]], kernel_size=kwargs["kernel_sizes"][0][0])


def segmenter_with_weights(meta: dict, weights: dict[str, torch.Tensor], n_classes: int, crop_size, unetr: dict,
                           what: str) -> torch.nn.Module:
    """The segmentation network of an exported backbone (`meta`: architecture and kwargs) with its weights in the
    encoder (and, for ResEnc, the decoder)."""
    net = build_segmenter(meta["architecture"], meta["kwargs"], n_classes, crop_size, unetr)
    if meta["architecture"] == "vit":
        with config_errors():  # the export does not fit the network this config builds
            load_strict(net.vit, weights, what)
    else:
        own = net.state_dict()
        # the pretraining head (reconstruction) is replaced by this task's segmentation layers; Primus's whole
        # PatchDecode, whose widths follow the class count (as nnU-Net's pretrained trainer takes only the
        # tokeniser, the encoder and the position embedding)
        head = SEG_HEAD if meta["architecture"] == "resenc" else net.decoder_prefix
        with config_errors():
            load_strict(net, {k: (own[k] if k.startswith(head) else v) for k, v in weights.items()}, what)
    return net


def segmenter_from_export(folder: str, n_classes: int, crop_size, unetr: dict) -> tuple[torch.nn.Module, dict]:
    meta, weights = read_export(folder)
    return segmenter_with_weights(meta, weights, n_classes, crop_size, unetr, f"backbone={folder}"), meta


def encoder_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What `freeze_encoder=true` freezes: UNETR's ViT, Primus's tokeniser and EVA encoder, or the ResEnc encoder."""
    from monai.networks.nets import UNETR

    from voxfm.models.primus import Primus

    if isinstance(net, UNETR):
        return list(net.vit.parameters())
    if isinstance(net, Primus):
        return list(net.encoder_parameters())
    return list(net.encoder.parameters())
