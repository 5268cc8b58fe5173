"""The MONAI reference steps `voxfm bench model` times beside voxfm's, at the same shapes and precision.

Forward + backward + AdamW step from ready tensors, MONAI as shipped (eager). ViT objectives: MONAI's
`MaskedAutoEncoderViT` with the same hidden-patch, per-patch-normalised MSE; CNN objectives: `DynUNet` with
residual blocks (same widths, depth and strides) and a hidden-voxel MSE.
"""

from __future__ import annotations

import contextlib

import torch

from voxfm.pretrain.objectives.mae import patchify
from voxfm.pretrain.objectives.mim import cube_visibility

MAE_NAME, DYNUNET_NAME = "MONAI MaskedAutoEncoderViT", "MONAI DynUNet (res_block, same widths)"


def _adamw(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=lr, **extra)


def monai_mae_step(module, lr: float, device: torch.device, autocast, views: int):
    """→ (step, name, note) for the shapes of voxfm's token backbone (a ViT, or Primus as a plain ViT of its size:
    MLP 4x wide, no RoPE) + MAE decoder; `views` images per step."""
    from monai.networks.nets import MaskedAutoEncoderViT

    spec, pipeline = module.backbone.spec, module.view_pipeline
    decoder = module.objective.decoder
    img_size = [g * p for g, p in zip(spec.grid, spec.patch_size)]
    model = MaskedAutoEncoderViT(
        in_channels=spec.in_channels,
        img_size=img_size,
        patch_size=spec.patch_size,
        hidden_size=spec.feature_dim,
        mlp_dim=4 * spec.feature_dim,
        num_layers=spec.layers,
        num_heads=spec.heads,
        masking_ratio=pipeline.masking.mask_ratio,
        decoder_hidden_size=decoder.proj.out_features,
        decoder_mlp_dim=decoder.blocks[0].mlp.linear1.out_features,
        decoder_num_layers=len(decoder.blocks),
        decoder_num_heads=decoder.blocks[0].attn.num_heads,
    ).to(device)
    x = torch.rand(views, spec.in_channels, *img_size, device=device)
    note = ""
    try:  # MONAI 1.6.1's MAE mixes dtypes in an index_put under bf16 autocast
        with autocast():
            model(x[:1])
    except RuntimeError:
        model, x, autocast, note = (
            model.to(torch.bfloat16),
            x.to(torch.bfloat16),
            contextlib.nullcontext,
            "bf16 weights: MONAI's MAE fails under autocast",
        )
    optimizer = _adamw(model, lr, device)

    def step():
        with autocast():
            pred, mask = model(x)
            target = patchify(x.float(), spec.patch_size)
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
            loss = ((pred.float() - target).pow(2).mean(-1) * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, MAE_NAME, note


def monai_dynunet_step(module, lr: float, device: torch.device, autocast, views: int):
    """→ (step, name, note) for voxfm's ResEnc UNet shapes; `views` crops per step, 60% of the cubes hidden."""
    from monai.networks.nets import DynUNet

    net = module.backbone
    strides = net.stage_strides
    model = DynUNet(
        spatial_dims=3,
        in_channels=net.in_channels,
        out_channels=net.out_channels,
        kernel_size=[3] * len(strides),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(net.preset["features_per_stage"]),
        res_block=True,
    ).to(device)
    optimizer = _adamw(model, lr, device)
    crop = module.view_pipeline.crop_size
    x = torch.rand(views, net.in_channels, *crop, device=device)
    cube = net.total_stride
    mask = torch.rand(views, (crop[0] // cube) * (crop[1] // cube) * (crop[2] // cube), device=device) < 0.6
    visible = cube_visibility(mask, crop)

    def step():
        with autocast():
            pred = model(x * visible)
            loss = ((pred.float() - x).pow(2) * (1 - visible)).sum() / (1 - visible).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, DYNUNET_NAME, "masked-voxel MSE at the same view count"


def reference_step(module, lr: float, device: torch.device, autocast, views: int):
    """→ (step, name, note), or (None, name, "out of memory") when MONAI does not fit where voxfm did, or (None,
    name, why) when MONAI has no step to compare with.
    The backbone's declared kind says which: tokens (a ViT) → MAE, a CNN → DynUNet."""
    cnn = module.backbone.declaration.kind == "cnn"
    if not cnn and not module.objective.declaration.reconstructs:  # MAE's reference: self-distillation has none
        return None, "MONAI", "no MONAI reference: MONAI has no such step"
    build, name = (monai_dynunet_step, DYNUNET_NAME) if cnn else (monai_mae_step, MAE_NAME)
    try:  # MONAI running out of memory where voxfm fits is a result, not a crash
        return build(module, lr, device, autocast, views)
    except torch.cuda.OutOfMemoryError:
        return None, name, "out of memory"
