"""Weight helpers every adapter uses: fp32 copies safetensors accepts, channel inflation, nnU-Net's axis order."""

from __future__ import annotations

import torch


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32, contiguous, no shared storage (ResEnc's aliased keys share tensors; safetensors refuses that)."""
    return {k: v.detach().float().clone().contiguous() for k, v in state.items()}


def inflate_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """[C_out, 1, k, k, k] → [C_out, N, k, k, k], split evenly so an N-times repeated input gives the
    same response as the single-channel backbone."""
    if weight.shape[1] != 1:
        raise ValueError(f"in_channels={in_channels}: inflation needs a 1-channel backbone, got {weight.shape[1]}")
    return (weight.repeat(1, in_channels, 1, 1, 1) / in_channels).contiguous()


def inflate(
    weights: dict[str, torch.Tensor], keys: list[str], kwargs: dict, channels_key: str, in_channels: int | None
) -> None:
    """Inflates `keys` (the first convolution and its aliases) in place when `in_channels` asks for more channels
    than `kwargs[channels_key]`, and records the new count in `kwargs`."""
    if in_channels is not None and in_channels != kwargs[channels_key]:
        for key in keys:
            weights[key] = inflate_channels(weights[key], in_channels)
        kwargs[channels_key] = in_channels


def transpose_kernels(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every 5-D tensor (conv and transposed-conv weights) [.., X, Y, Z] → [.., Z, Y, X]."""
    return {k: (v.permute(0, 1, 4, 3, 2).contiguous() if v.ndim == 5 else v) for k, v in weights.items()}


def keep_heads(net: torch.nn.Module, weights: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """The pretrained weights with the segmenter's own (new) values for the keys under `head`: the pretraining
    head is replaced by this task's."""
    own = net.state_dict()
    return {k: (own[k] if k.startswith(head) else v) for k, v in weights.items()}
