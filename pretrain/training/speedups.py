"""Speed applied from outside the model, in one ordered function (torchtitan's `parallelize` pattern).

1. activation checkpointing: each transformer block (ViT) or residual block (ResEnc UNet) recomputes its
   activations in backward instead of keeping them — memory for ~1/3 more compute;
2. `torch.compile`: `"step"` compiles the whole step — device-side views, backbone, objective and loss — as graphs
   without breaks (`pretrain/training/compiled_step.py`, applied by the training module); `"blocks"` compiles each
   repeated block alone, for DeepSpeed ZeRO-3, whose parameter gathering hooks a whole-step graph cannot hold
   (cuDNN autotuning, `cudnn.benchmark`, is on for every GPU run: `build_trainer`);
3. the distribution strategy is Lightning's (`pretrain/training/strategy.py`).
Both steps patch the blocks in place, so parameter names — and the MONAI / nnU-Net exports — are unchanged.
Parameters stay contiguous (NCDHW): a channels-last copy would not save to safetensors; under compile inductor
picks channels-last layouts for the convolutions itself (`layout_optimization`).
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def repeated_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The units to checkpoint and compile, as the backbone names them (ViT blocks, the residual blocks of every
    encoder stage)."""
    return backbone.repeated_blocks()


def _checkpointed_forward(block: nn.Module) -> None:
    inner = block.forward

    def forward(self, *args):
        if not self.training or not torch.is_grad_enabled():
            return inner(*args)
        return checkpoint(inner, *args, use_reentrant=False)

    block.forward = types.MethodType(forward, block)


def compile_mode(trainer_compile: bool, strategy: dict) -> str | None:
    """trainer.compile → None (eager), "step" (whole step) or "blocks" (DeepSpeed ZeRO-3, see above)."""
    if not trainer_compile:
        return None
    return "blocks" if strategy.get("name") == "deepspeed" and strategy.get("stage") == 3 else "step"


def parallelize(
    backbone: nn.Module, activation_checkpointing: bool = False, compiled: bool | str | None = None
) -> nn.Module:
    """compiled: "blocks" (or True) compiles each repeated block here; "step" is applied by the training module
    (it compiles the stage and the objective around this backbone), None/False leaves the model eager."""
    per_block = compiled is True or compiled == "blocks"
    blocks = repeated_blocks(backbone) if (activation_checkpointing or per_block) else []
    for block in blocks:
        if activation_checkpointing:
            _checkpointed_forward(block)
        if per_block:
            block.compile()
    return backbone
