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


@pytest.mark.slow
def test_compiled_blocks_give_the_same_numbers_and_names():
    plain, fast = _pair("vit", compiled=True, activation_checkpointing=True)
    x = torch.randn(2, 1, 16, 16, 16)
    (l1, g1), (l2, g2) = _loss_and_grads(plain, x), _loss_and_grads(fast, x)
    assert torch.allclose(l1, l2, rtol=1e-4) and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g1, g2))
    assert list(plain.state_dict()) == list(fast.state_dict())
