"""`voxfm export`: checkpoint → weights that load without voxfm, plus a model card (README.md).

format=monai (default): `backbone.safetensors` + `backbone.json`; a ViT loads with strict=True into
`monai.networks.nets.ViT(**kwargs)` and `UNETR(...).vit`, a ResEnc into nnU-Net's `ResidualEncoderUNet`.
format=nnunet (ResEnc): `nnunet_pretrained.pth` for `nnUNetv2_train ... -pretrained_weights`, in nnU-Net's
axis order, and `nnunet_plans_fragment.json`. format=full: every weight of the pretraining module
(backbone + objective heads) + config + step, for `voxfm pretrain init_from=<export>`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from data.crops import triple
from pretrain.checkpoints import consolidate_deepspeed, find_resume_checkpoint, is_deepspeed_checkpoint, load_checkpoint
from pretrain.export_formats import (
    clone_state,
    nnunet_plans_fragment,
    resenc_monai,
    to_nnunet_axes,
    vit_monai,
)
from pretrain.model_card import write_model_card

BACKBONE_PREFIX = "backbone."
FORMATS = ("monai", "nnunet", "full")
ARCHITECTURES = {"models.vit.ViT": "vit", "models.resenc.ResEncUNet": "resenc"}
NO_DATA = {"spacing": None, "orientation": "RAS", "normalisation": None, "modalities": None, "datasets": None}


def resolve_checkpoint(checkpoint: str) -> Path:
    """A .ckpt file, a DeepSpeed checkpoint folder, or a run_dir (its newest readable checkpoint)."""
    path = Path(checkpoint)
    if (path / "checkpoints").is_dir():
        path, _ = find_resume_checkpoint(path / "checkpoints")
    if path is None or not (path.is_file() or (path / "latest").is_file()):
        raise ValueError(f"checkpoint={checkpoint}: no checkpoint there (expected a .ckpt file or folder, or a "
                         "run_dir)")
    return path


def _common_meta(ckpt: dict, ckpt_path: Path, config: dict, data: dict) -> dict:
    return {
        "spacing": data["spacing"], "orientation": data["orientation"],
        "axis_order": "[C, X, Y, Z] with X → Right, Y → Anterior, Z → Superior (RAS, numpy/nibabel order)",
        "normalisation": data["normalisation"], "pretraining_modalities": data["modalities"],
        "pretraining_datasets": data.get("datasets"), "step": int(ckpt["global_step"]),
        "objective": config["objective"]["loss"]["_target_"].rsplit(".", 1)[-1], "checkpoint": str(ckpt_path),
        "config": config,
    }


def run_export(checkpoint: str, output: str, in_channels: int | None = None, format: str = "monai") -> Path:
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; allowed: {', '.join(FORMATS)}")
    if in_channels is not None and in_channels < 1:
        raise ValueError(f"in_channels={in_channels}: expected >= 1")
    ckpt_path = resolve_checkpoint(checkpoint)
    # a DeepSpeed folder is consolidated from every rank's shard into the same fp32 weights a DDP run has
    ckpt = consolidate_deepspeed(ckpt_path) if is_deepspeed_checkpoint(ckpt_path) else load_checkpoint(ckpt_path)
    config = ckpt.get("voxfm_config")
    if config is None:
        raise ValueError(f"checkpoint={ckpt_path} was not written by voxfm pretrain (no voxfm_config)")
    data = {**NO_DATA, **(ckpt.get("voxfm_data") or {})}
    architecture = ARCHITECTURES.get(config["model"]["_target_"])
    if architecture is None:
        raise ValueError(f"checkpoint={ckpt_path}: no export for model {config['model']['_target_']}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": f"voxfm-{format}/1", **_common_meta(ckpt, ckpt_path, config, data)}
    if format == "full":
        if in_channels is not None:
            raise ValueError("in_channels: format=full keeps the pretraining module as it is; inflate in "
                             "format=monai or nnunet")
        save_file(clone_state(ckpt["state_dict"]), str(out / "model.safetensors"))
        meta["architecture"] = architecture
        (out / "full.json").write_text(json.dumps(meta, indent=1))
        write_model_card(out, meta, format)
        return out
    from hydra.utils import instantiate

    backbone = instantiate(config["model"])  # only to read the architecture's kwargs
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
    weights, arch = (vit_monai if architecture == "vit" else resenc_monai)(state, backbone, in_channels)
    meta.update(arch, channel_inflation=None if in_channels in (None, 1) else {"from": 1, "to": in_channels})
    if format == "nnunet":
        if architecture != "resenc":
            raise ValueError("format=nnunet needs a ResEnc backbone (nnU-Net's ResidualEncoderUNet); export a ViT "
                             "with format=monai (UNETR)")
        weights, kwargs = to_nnunet_axes(weights, arch["kwargs"])
        torch.save({"network_weights": weights, "voxfm": {k: v for k, v in meta.items() if k != "config"}},
                   out / "nnunet_pretrained.pth")
        fragment = nnunet_plans_fragment(kwargs, list(triple(config["data"]["crop_size"])), data["spacing"],
                                         data["normalisation"], data["modalities"])
        (out / "nnunet_plans_fragment.json").write_text(json.dumps(fragment, indent=1))
        meta["nnunet_kwargs"] = kwargs
    else:
        save_file(weights, str(out / "backbone.safetensors"))
    (out / "backbone.json").write_text(json.dumps(meta, indent=1))
    write_model_card(out, meta, format)
    return out
