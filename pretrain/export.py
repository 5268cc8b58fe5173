"""`voxfm export`: checkpoint → backbone.safetensors + backbone.json that load into MONAI without voxfm.

The weights load with `strict=True` into `monai.networks.nets.ViT(**json["monai_kwargs"])` and into
`UNETR(...).vit`. MONAI's transformer blocks own a `norm_cross_attn` LayerNorm that is unused without
cross-attention; it is written with its identity initialisation so the key sets match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pretrain.checkpoints import consolidate_deepspeed, find_resume_checkpoint, is_deepspeed_checkpoint, load_checkpoint

BACKBONE_PREFIX = "backbone."


def resolve_checkpoint(checkpoint: str) -> Path:
    """A .ckpt file, a DeepSpeed checkpoint folder, or a run_dir (its newest readable checkpoint)."""
    path = Path(checkpoint)
    if (path / "checkpoints").is_dir():
        path, _ = find_resume_checkpoint(path / "checkpoints")
    if path is None or not (path.is_file() or (path / "latest").is_file()):
        raise ValueError(f"checkpoint={checkpoint}: no checkpoint there (expected a .ckpt file or folder, or a "
                         "run_dir)")
    return path


def monai_state_dict(state: dict[str, torch.Tensor], hidden_size: int, num_layers: int) -> dict[str, torch.Tensor]:
    """voxfm ViT weights (names already MONAI's) + MONAI's unused cross-attention norms."""
    out = {k: v.detach().float().contiguous() for k, v in state.items()}
    for i in range(num_layers):
        out[f"blocks.{i}.norm_cross_attn.weight"] = torch.ones(hidden_size)
        out[f"blocks.{i}.norm_cross_attn.bias"] = torch.zeros(hidden_size)
    return out


def inflate_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """[C_out, 1, p, p, p] → [C_out, N, p, p, p], split evenly so an N-times repeated input gives the
    same response as the single-channel backbone."""
    if weight.shape[1] != 1:
        raise ValueError(f"in_channels={in_channels}: inflation needs a 1-channel backbone, got {weight.shape[1]}")
    return weight.repeat(1, in_channels, 1, 1, 1) / in_channels


def run_export(checkpoint: str, output: str, in_channels: int | None = None) -> Path:
    ckpt_path = resolve_checkpoint(checkpoint)
    # a DeepSpeed folder is consolidated from every rank's shard into the same fp32 weights a DDP run has
    ckpt = consolidate_deepspeed(ckpt_path) if is_deepspeed_checkpoint(ckpt_path) else load_checkpoint(ckpt_path)
    config = ckpt.get("voxfm_config")
    if config is None:
        raise ValueError(f"checkpoint={ckpt_path} was not written by voxfm pretrain (no voxfm_config)")
    data = ckpt.get("voxfm_data") or {"spacing": None, "orientation": "RAS", "normalisation": None, "modalities": None}
    model_cfg = config["model"]
    if model_cfg["_target_"] != "models.vit.ViT":
        raise ValueError(f"checkpoint={ckpt_path}: export writes ViT backbones; {model_cfg['_target_']} export formats "
                         "(nnU-Net, MONAI) are not written yet. The checkpoint's `backbone.*` weights already are "
                         "the ResidualEncoderUNet state_dict that nnU-Net loads by name.")
    from hydra.utils import instantiate

    backbone = instantiate(model_cfg)  # only to read the architecture's MONAI kwargs
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
    weights = monai_state_dict(state, backbone.hidden_size, backbone.num_layers)
    kwargs = backbone.monai_kwargs()
    if in_channels is not None and in_channels != kwargs["in_channels"]:
        key = "patch_embedding.patch_embeddings.weight"
        weights[key] = inflate_channels(weights[key], in_channels).contiguous()
        kwargs["in_channels"] = in_channels
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "backbone.safetensors"))
    meta = {
        "format": "voxfm-backbone/1",
        "architecture": "vit",
        "monai_class": "monai.networks.nets.ViT",
        "monai_kwargs": kwargs,
        "patch_size": kwargs["patch_size"],
        "img_size": kwargs["img_size"],
        "channel_inflation": None if in_channels in (None, 1) else {"from": 1, "to": in_channels},
        "spacing": data["spacing"],
        "orientation": data["orientation"],
        "normalisation": data["normalisation"],
        "pretraining_modalities": data["modalities"],
        "step": int(ckpt["global_step"]),
        "checkpoint": str(ckpt_path),
        "config": config,
        "usage": "ViT(**monai_kwargs).load_state_dict(safetensors.torch.load_file('backbone.safetensors'))",
    }
    (out / "backbone.json").write_text(json.dumps(meta, indent=1))
    return out
