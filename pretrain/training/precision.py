"""The dtypes of a step's inputs: the views' (`view_dtype`) and what Lightning's input conversion may do to them.

Precisions that compute without autocast (DeepSpeed's bf16, bf16-true) convert the batch to the weights'
dtype. The image is kept in the views' dtype (`convert_views`): objectives compute targets from it (MAE's per-patch
standardised patches, MIM's voxels), and bf16 rounds 8x coarser than the views' fp16 (about 8 HU near a CT window's
middle against 1). The convolutions that take the image (every backbone's patch conv or stem is a Conv3d) cast it
to their weights' dtype as they read it (`cast_conv_inputs`), applied from outside, as the speed-ups are. The
regions' batch the loader yields is not converted at all (`plugin_for`): its intensity windows stay fp32 (bf16
would move an MR window's percentile bounds by up to 0.4%); the views make their own floats from them.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import DeepSpeedPrecision, HalfPrecision
from torch import nn

_UNIFIED = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}  # Lightning's short names


class _RegionsAsTheyAre:
    """For the precision plugins that convert the batch: the loader's regions (a batch with no "image" yet) pass as
    they are; the views' output is converted by `convert_views`."""

    def convert_input(self, data):
        if isinstance(data, dict) and "region" in data and "image" not in data:
            return data
        return super().convert_input(data)


class ViewsDeepSpeedPrecision(_RegionsAsTheyAre, DeepSpeedPrecision):
    pass


class ViewsHalfPrecision(_RegionsAsTheyAre, HalfPrecision):
    pass


def plugin_for(precision: str, deepspeed: bool) -> DeepSpeedPrecision | HalfPrecision | None:
    """The precision plugin of a run whose precision converts the batch (DeepSpeed's, bf16-true), which Lightning
    then takes instead of `Trainer(precision=...)`; None where Lightning's own (autocast or none) converts nothing."""
    precision = _UNIFIED.get(precision, precision)
    if deepspeed:
        return ViewsDeepSpeedPrecision(precision)
    if precision in ("bf16-true", "16-true"):
        return ViewsHalfPrecision(precision)
    return None


def view_dtype(precision: str) -> torch.dtype:
    """The dtype the views are written in for a trainer precision ("bf16-mixed", "16-true", "32-true", ...): fp16 for
    every half precision, fp32 otherwise. fp16, not bf16, even for a bf16 step: the same two bytes, but a step 8x
    finer (about 1 HU of a 2000-HU window near its middle, the int16 source's own step, where bf16 rounds to 8 HU);
    a per-patch standardised target (MAE's norm_pix_loss) divides that rounding by each patch's own spread, which
    is a few HU in soft tissue. The views compute in fp32 and round once as they write; under autocast the first
    layer rounds to the step's half type inside its graph; under the precisions that compute without autocast the
    first convolution casts it (`convert_views`)."""
    if precision.startswith(("bf16", "16")):
        return torch.float16
    return torch.float32


def convert_views(plugin, views: dict, module: nn.Module) -> dict:
    """Lightning's input conversion (`plugin.convert_input`) of the views, except for the image, which keeps the views'
    dtype, and the regions they were cut from (not copied: nothing reads them after the views); where the conversion
    would have changed the image, `module`'s convolutions cast their input (`cast_conv_inputs`, installed once)."""
    kept = {k: views[k] for k in ("image", "region") if k in views}  # the regions: read by nothing after the views
    batch = plugin.convert_input({k: v for k, v in views.items() if k not in kept}) | kept
    if getattr(module, "_voxfm_convs_cast", False):  # decided at the first batch: nothing to do on every step
        return batch
    if plugin.convert_input(views["image"][:0]).dtype != views["image"].dtype:
        cast_conv_inputs(module)
    module._voxfm_convs_cast = True
    return batch


def cast_conv_inputs(module: nn.Module) -> int:
    """A forward pre-hook on each Conv3d of `module` (once per convolution) that casts a floating input to the
    weight's dtype; a no-op where they match. Returns the number of hooks added."""
    added = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv3d) and not getattr(conv, "_voxfm_casts_input", False):
            conv.register_forward_pre_hook(_to_weight_dtype)
            conv._voxfm_casts_input = True
            added += 1
    return added


def _to_weight_dtype(conv: nn.Conv3d, args: tuple) -> tuple | None:
    x = args[0]
    if x.is_floating_point() and x.dtype != conv.weight.dtype:
        return (x.to(conv.weight.dtype), *args[1:])
    return None
