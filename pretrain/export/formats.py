"""The weights and architecture description of each export format.

- ViT → MONAI `ViT` (and `UNETR(...).vit`), names already MONAI's, plus MONAI's unused cross-attention norms.
- ResEnc → nnU-Net's `ResidualEncoderUNet` from dynamic_network_architectures, built from JSON kwargs
  (classes as dotted names, as nnU-Net's plans write them; the model card's snippet resolves them through an
  allowlist, never `pydoc.locate`).
- Primus → nnU-Net's `Primus` (dynamic_network_architectures), whose parameter names it already has.
- nnU-Net: the same ResEnc or Primus weights in nnU-Net's axis order. voxfm's tensors are [C, X, Y, Z] in RAS;
  nnU-Net (NibabelIOWithReorient or SimpleITKIO) hands the network [C, Z, Y, X]. Transposing every
  kernel's spatial axes (and reversing kernel sizes, strides, spacing and patch size; for Primus also reordering
  its position embeddings and RoPE blocks) makes nnU-Net's network compute exactly voxfm's function on its own
  axis order, so no pretrained feature is lost to an axis mix-up.
"""

from __future__ import annotations

import torch

from voxfm.pretrain.errors import ConfigError

REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32, contiguous, no shared storage (ResEnc's aliased keys share tensors; safetensors refuses that)."""
    return {k: v.detach().float().clone().contiguous() for k, v in state.items()}


def inflate_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """[C_out, 1, k, k, k] → [C_out, N, k, k, k], split evenly so an N-times repeated input gives the
    same response as the single-channel backbone."""
    if weight.shape[1] != 1:
        raise ConfigError(f"in_channels={in_channels}: inflation needs a 1-channel backbone, got {weight.shape[1]}")
    return (weight.repeat(1, in_channels, 1, 1, 1) / in_channels).contiguous()


def vit_monai(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
    weights = clone_state(state)
    weights.pop("cls_token", None)  # a segmentation ViT (classification=False) has none; the model card says so
    hidden = backbone.hidden_size
    for i in range(backbone.num_layers):
        weights[f"blocks.{i}.norm_cross_attn.weight"] = torch.ones(hidden)
        weights[f"blocks.{i}.norm_cross_attn.bias"] = torch.zeros(hidden)
    kwargs = backbone.monai_kwargs()
    if in_channels is not None and in_channels != kwargs["in_channels"]:
        key = "patch_embedding.patch_embeddings.weight"
        weights[key] = inflate_channels(weights[key], in_channels)
        kwargs["in_channels"] = in_channels
    name = backbone.declaration.export_class
    return weights, {"architecture": "vit", "class": name, "kwargs": kwargs,
                     "kwargs_requires_import": [], "monai_class": name, "monai_kwargs": kwargs,
                     "patch_size": kwargs["patch_size"], "img_size": kwargs["img_size"]}


def _dotted(value):
    return f"{value.__module__}.{value.__qualname__}" if isinstance(value, type) else value


def resenc_kwargs_json(preset: dict) -> dict:
    return {k: _dotted(v) for k, v in preset.items()}


def resenc_monai(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
    weights = clone_state(state)
    kwargs = resenc_kwargs_json(backbone.preset)
    if in_channels is not None and in_channels != kwargs["input_channels"]:
        stem = [k for k, v in weights.items() if ".stem.convs.0." in k and k.endswith("weight") and v.ndim == 5]
        for key in stem:  # the stem conv and its aliases (all_modules.0, decoder.encoder.*)
            weights[key] = inflate_channels(weights[key], in_channels)
        kwargs["input_channels"] = in_channels
    return weights, {"architecture": "resenc", "class": backbone.declaration.export_class, "kwargs": kwargs,
                     "kwargs_requires_import": REQUIRES_IMPORT, "total_stride": backbone.total_stride}


def primus_weights(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
    weights = clone_state(state)
    kwargs = dict(backbone.kwargs)
    if in_channels is not None and in_channels != kwargs["input_channels"]:
        key = "down_projection.proj.weight"
        weights[key] = inflate_channels(weights[key], in_channels)
        kwargs["input_channels"] = in_channels
    return weights, {"architecture": "primus", "class": backbone.declaration.export_class, "kwargs": kwargs,
                     "kwargs_requires_import": []}


EXPORTS = {"vit": vit_monai, "resenc": resenc_monai, "primus": primus_weights}  # by the architecture declared


def exported_weights(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
    """A backbone's weights `state` → (the weights as exported, the description: architecture, class, kwargs...);
    `backbone` (built from the same config) supplies the architecture's arguments."""
    return EXPORTS[backbone.declaration.architecture](state, backbone, in_channels)


def backbone_weights(backbone, in_channels: int | None = None) -> tuple[dict, dict]:
    """A built voxfm backbone → (its weights as exported, its description: architecture, class, kwargs...)."""
    return exported_weights(backbone.state_dict(), backbone, in_channels)


def transpose_kernels(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every 5-D tensor (conv and transposed-conv weights) [.., X, Y, Z] → [.., Z, Y, X]."""
    return {k: (v.permute(0, 1, 4, 3, 2).contiguous() if v.ndim == 5 else v) for k, v in weights.items()}


def to_nnunet_axes(weights: dict[str, torch.Tensor], kwargs: dict) -> tuple[dict, dict]:
    """ResEnc: [.., X, Y, Z] kernels → [.., Z, Y, X], and the per-axis kwargs reversed."""
    kwargs = dict(kwargs)
    for key in ("kernel_sizes", "strides"):
        kwargs[key] = [list(reversed(s)) for s in kwargs[key]]
    return transpose_kernels(weights), kwargs


def primus_to_nnunet_axes(weights: dict[str, torch.Tensor], kwargs: dict) -> tuple[dict, dict]:
    """Primus: kernels transposed and patch_embed_size / input_shape reversed; the position embeddings of the patches
    (after any register tokens) moved from raster order over voxfm's grid (X, Y, Z) to raster order over (Z, Y, X);
    and, because 3D axial RoPE turns each head's q and k in three equal blocks, one per grid axis, axis 0 first
    (`models.eva.axial_rope`), the first and last block of every head's q and k swapped: nnU-Net's axis 0 is
    voxfm's Z. Permuting q and k alike leaves q·k, hence attention, unchanged."""
    out = transpose_kernels(weights)
    grid = [s // p for s, p in zip(kwargs["input_shape"], kwargs["patch_embed_size"])]
    kwargs = dict(kwargs, patch_embed_size=kwargs["patch_embed_size"][::-1], input_shape=kwargs["input_shape"][::-1])
    if "eva.pos_embed" in out:
        table, registers = out["eva.pos_embed"], kwargs["num_register_tokens"]
        patches = table[:, registers:].reshape(1, *grid, -1).permute(0, 3, 2, 1, 4).reshape(1, -1, table.shape[-1])
        out["eva.pos_embed"] = torch.cat([table[:, :registers], patches], dim=1).contiguous()
    if kwargs["use_rot_pos_emb"]:
        heads = kwargs["eva_numheads"]
        head = kwargs["embed_dim"] // heads
        block = head // 3  # 2 x the RoPE bands of one axis
        order = torch.cat([torch.arange(2 * block, head), torch.arange(block, 2 * block), torch.arange(block)])
        rows = (torch.arange(heads).unsqueeze(1) * head + order).flatten()
        for key in out:
            if key.endswith((".attn.q_proj.weight", ".attn.q_proj.bias", ".attn.k_proj.weight")):
                out[key] = out[key][rows].contiguous()
    return out, kwargs


def nnunet_plans_fragment(network_class: str, kwargs: dict, patch_size, spacing, normalisation: dict | None,
                          modalities) -> dict:
    """What to merge into nnU-Net's plans (a configuration inheriting 3d_fullres) and dataset.json;
    network_class: the dotted nnU-Net class the backbone exports to."""
    arch = {k: v for k, v in kwargs.items() if k not in ("input_channels", "num_classes", "deep_supervision")}
    schemes = {"CT": "CTNormalization", "MR": "ZScoreNormalization", "PET": "ZScoreNormalization"}
    return {
        "dataset_json": {"overwrite_image_reader_writer": "NibabelIOWithReorient"},
        "plans": {"configurations": {"3d_fullres_voxfm": {
            "inherits_from": "3d_fullres",
            "patch_size": list(reversed(patch_size)),
            "spacing": list(reversed(spacing)) if spacing else None,
            "architecture": {"network_class_name": network_class, "arch_kwargs": arch,
                             "_kw_requires_import": REQUIRES_IMPORT},
        }}},
        "normalization_schemes_by_modality": {m: schemes[m] for m in (modalities or {"CT": 0, "MR": 0})},
        "voxfm_normalisation": normalisation,
        "axis_order": "nnU-Net's [C, Z, Y, X] of the RAS-reoriented image; these weights are transposed for it",
        "input_channels": kwargs["input_channels"],
    }
