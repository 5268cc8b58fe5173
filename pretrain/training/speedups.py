"""Speed applied from outside the model, in one ordered function (torchtitan's `parallelize` pattern).

0. FP8 linears (`trainer.fp8`, H100-class GPUs): torchao's float8 training swaps eligible nn.Linear layers;
1. activation checkpointing: each transformer block (ViT) or residual block (ResEnc UNet) recomputes its
   activations in backward instead of keeping them — memory for ~1/3 more compute;
2. `torch.compile`: `"step"` compiles the whole step — device-side views, backbone, objective and loss — as graphs
   without breaks (`pretrain/training/compiled_step.py`, applied by the training module); `"blocks"` compiles each
   repeated block alone, for DeepSpeed ZeRO-3, whose parameter gathering hooks a whole-step graph cannot hold; each
   block is then a ZeRO-3 leaf, gathering its own parameters, so no hook breaks the block's graph; the blocks an
   objective holds (the MAE decoder's) compile the same way (`objective_blocks`)
   (cuDNN autotuning, `cudnn.benchmark`, is on for every GPU run: `build_trainer`);
3. the distribution strategy is Lightning's (`pretrain/training/strategy.py`).
Both steps patch the blocks in place, so parameter names — and the MONAI / nnU-Net exports — are unchanged.
Parameters stay contiguous (NCDHW): a channels-last copy would not save to safetensors; under compile inductor
picks channels-last layouts for the convolutions itself (`layout_optimization`).
"""

from __future__ import annotations

import types

import torch
from lightning.pytorch.utilities import rank_zero_only
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


def fp8_linears(backbone: nn.Module) -> list[str]:
    """The backbone's linears in FP8 for training (torchao's float8 training, rowwise scaling: an H100-class GPU's
    FP8 GEMMs). Only layers whose both sizes are multiples of 16 (FP8 GEMM tiles) are swapped; each keeps its
    parameters (same names, same precision), so checkpoints and exports are unchanged. Returns the swapped names."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        name = torch.cuda.get_device_name()
        raise ValueError(f"trainer.fp8=true: {name} has no FP8 GEMMs (compute capability >= 8.9: H100, H200, L40S)")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise ValueError("trainer.fp8=true needs torchao: pip install torchao") from None

    swapped = []

    def eligible(module: nn.Module, name: str) -> bool:
        ok = isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
        if ok:
            swapped.append(name)
        return ok

    convert_to_float8_training(
        backbone, config=Float8LinearConfig.from_recipe_name("rowwise"), module_filter_fn=eligible
    )
    return swapped


def parallelize(
    backbone: nn.Module, activation_checkpointing: bool = False, compiled: bool | str | None = None, fp8: bool = False
) -> nn.Module:
    """compiled: "blocks" (or True) compiles each repeated block here; "step" is applied by the training module
    (it compiles the stage and the objective around this backbone), None/False leaves the model eager. fp8: the
    backbone's linears in FP8 (`fp8_linears`), first, so compile sees the FP8 layers."""
    if fp8:
        fp8_linears(backbone)
    per_block = compiled is True or compiled == "blocks"
    blocks = repeated_blocks(backbone) if (activation_checkpointing or per_block) else []
    for block in blocks:
        if activation_checkpointing:
            _checkpointed_forward(block)
        if compiled == "blocks":
            _zero3_leaf(block)
        if per_block:
            _compile_forward(block)
    return backbone


def objective_blocks(objective: nn.Module) -> list[nn.Module]:
    """For "blocks": the objective's own repeated blocks (`repeated_blocks()`, where it has one: the MAE decoder's)
    compile one by one as ZeRO-3 leaves, as the backbone's do (under "step" the objective is inside the step's
    graph). Returns the blocks compiled."""
    blocks = getattr(objective, "repeated_blocks", list)()
    for block in blocks:
        _zero3_leaf(block)
        _compile_forward(block)
    return blocks


@rank_zero_only
def report_blocks(backbone: int, objective: int) -> None:
    print(f"voxfm: torch.compile block by block (ZeRO-3): {backbone} backbone blocks, {objective} objective blocks")


_compiled_blocks = 0


def _compile_forward(block: nn.Module) -> None:
    """The block's forward compiles, not its call: ZeRO-3's gathering hooks stay eager. `nn.Module.compile` would trace
    them too, and they recompile for every block (a guard on each one's id) until dynamo's limit.
    The blocks share one forward function, but each may still need graphs of its own: its stochastic-depth rate is
    a constant dynamo guards on, times grad / no-grad, and the MAE decoder's last block takes the hidden tokens
    alone. Dynamo's limit per function (8) would leave the deeper blocks eager, so it grows with the blocks
    compiled, 4 each."""
    global _compiled_blocks
    _compiled_blocks += 1
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 4 * _compiled_blocks)
    block.forward = torch.compile(block.forward)


def _zero3_leaf(block: nn.Module) -> None:
    """ZeRO-3 gathers the block's parameters once, in the block's own forward hook, and hooks none of its submodules.
    The compiled block then traces its body as one graph. With a hook on every submodule it broke at each one, and
    the Linear forward they share recompiled for each shape until dynamo's limit, then ran eagerly."""
    from deepspeed.utils import set_z3_leaf_module  # DeepSpeed is imported only where ZeRO-3 runs

    set_z3_leaf_module(block, True)
