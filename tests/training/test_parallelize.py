"""Activation checkpointing and torch.compile applied from outside: same numbers, same parameter names."""

import pytest
import torch

from voxfm.models.resenc import ResEncUNet
from voxfm.models.vit import ViT
from voxfm.pretrain.training.speedups import parallelize, repeated_blocks

MAKERS = {
    "vit": lambda: ViT(1, 16, 4, 48, 96, 2, 4),
    "resenc": lambda: ResEncUNet(
        features_per_stage=(8, 16, 32), n_blocks_per_stage=(1, 2, 1), n_conv_per_stage_decoder=(1, 1)
    ),
}


def _pair(kind, **options):
    torch.manual_seed(0)
    plain, fast = MAKERS[kind](), MAKERS[kind]()
    fast.load_state_dict(plain.state_dict())
    parallelize(fast, **options)
    return plain, fast


def _loss_and_grads(model, x):
    loss = model(x).float().pow(2).mean()
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("kind", list(MAKERS))
def test_activation_checkpointing_changes_memory_not_numbers(kind):
    plain, fast = _pair(kind, activation_checkpointing=True)
    assert len(repeated_blocks(fast)) == (2 if kind == "vit" else 4)
    x = torch.randn(2, 1, 16, 16, 16)
    (l1, g1), (l2, g2) = _loss_and_grads(plain, x), _loss_and_grads(fast, x)
    assert torch.equal(l1, l2) and len(g1) == len(g2) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))
    assert list(plain.state_dict()) == list(fast.state_dict())  # exports keep MONAI / nnU-Net names


@pytest.mark.parametrize("kind", list(MAKERS))
def test_under_zero3_each_compiled_block_is_a_leaf_that_gathers_its_own_parameters(kind):
    """ZeRO-3 hooks every submodule unless a module is marked a leaf. A hook inside a compiled block broke its graph
    at every Linear, and the Linear forward they share then recompiled per shape until dynamo's limit (eager from
    there on, seen in a ZeRO-3 run on the CPU). As leaves, the block gathers its parameters in its own hook and its
    body traces whole. Only the "blocks" mode (ZeRO-3) marks them."""
    from deepspeed.utils.z3_leaf_module import z3_leaf_module

    _, zero3 = _pair(kind, compiled="blocks")
    _, whole_step = _pair(kind, compiled="step")
    assert all(z3_leaf_module(block) for block in repeated_blocks(zero3))
    assert not any(z3_leaf_module(module) for module in whole_step.modules())
    assert not any(
        z3_leaf_module(module)
        for module in repeated_blocks(zero3)[0].modules()
        if module is not repeated_blocks(zero3)[0]
    )


@pytest.mark.slow
def test_compiled_blocks_give_the_same_numbers_and_names():
    plain, fast = _pair("vit", compiled=True, activation_checkpointing=True)
    x = torch.randn(2, 1, 16, 16, 16)
    (l1, g1), (l2, g2) = _loss_and_grads(plain, x), _loss_and_grads(fast, x)
    assert torch.allclose(l1, l2, rtol=1e-4) and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g1, g2))
    assert list(plain.state_dict()) == list(fast.state_dict())


def test_fp8_swaps_the_tile_sized_linears_and_keeps_every_parameter_name():
    pytest.importorskip("torchao.float8")
    from voxfm.pretrain.export.formats import backbone_weights
    from voxfm.pretrain.training.speedups import fp8_linears

    torch.manual_seed(0)
    plain = ViT(1, 16, 4, 48, 96, 2, 4)  # hidden 48, MLP 96: multiples of 16
    converted = ViT(1, 16, 4, 48, 96, 2, 4)
    converted.load_state_dict(plain.state_dict())
    swapped = fp8_linears(converted)
    assert swapped and all(type(converted.get_submodule(n)).__name__ == "Float8Linear" for n in swapped)
    assert {n for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear)} == set(swapped)
    assert converted.state_dict().keys() == plain.state_dict().keys()  # checkpoints and exports are unchanged
    assert all(v.dtype == torch.float32 for v in converted.state_dict().values())  # the weights' own precision
    exported, _ = backbone_weights(converted)
    assert exported.keys() == backbone_weights(plain)[0].keys()


def test_the_whole_step_is_compiled_in_the_mode_asked(monkeypatch):
    from voxfm.pretrain.training.compiled_step import CompiledStep

    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: modes.append(kwargs["mode"]) or fn)
    CompiledStep(True, "max-autotune").wrap("step", lambda x: x)
    assert modes == ["max-autotune"]


def test_blocks_compiled_one_by_one_each_get_their_graphs_below_the_recompile_limit(monkeypatch):
    """Compiled block by block (ZeRO-3's mode), the blocks share one forward function, but a stochastic-depth rate of
    its own makes each block a graph of its own: 6 blocks, train and no-grad, are 12 graphs of one function. None
    may fall back to eager at dynamo's per-function limit (8 by default)."""
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="eager", **kw))  # traced, not lowered
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    vit = parallelize(ViT(1, 16, 4, 24, 48, 6, 4, drop_path_rate=0.1), compiled=True)
    x = torch.randn(2, 1, 16, 16, 16)
    vit(x).float().pow(2).mean().backward()
    with torch.no_grad():
        vit(x)
    frames = counters["frames"]
    assert frames["total"] == frames["ok"] == counters["stats"]["unique_graphs"] == 12, dict(frames)
