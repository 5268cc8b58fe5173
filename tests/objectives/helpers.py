"""Shared checks for objective tests: a fixed tiny batch, determinism, gradient reach, overfitting."""

from __future__ import annotations

import torch

from voxfm.data.views.counter_random import step_key
from voxfm.data.views.pipeline import ViewPipeline


def smooth_regions(b: int, size: int, seed: int = 0) -> dict:
    """b regions [b, 1, size³] of a few Gaussian blobs each (smooth, so a tiny model can memorise them)."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.linspace(-1, 1, size)
    x, y, z = torch.meshgrid(axes, axes, axes, indexing="ij")
    vols = []
    for _ in range(b):
        v = torch.zeros(size, size, size)
        for _ in range(4):
            c = torch.rand(3, generator=g) * 1.6 - 0.8
            r = 0.2 + 0.3 * torch.rand(1, generator=g)
            v += torch.rand(1, generator=g) * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / r**2)
        vols.append(v)
    region = torch.stack(vols)[:, None]
    return {
        "region": region,
        "low": torch.zeros(b),
        "high": torch.full((b,), float(region.max())),
        "modality": ["MR"] * b,
    }


TINY_RESENC = {"features_per_stage": (8, 16, 32), "n_blocks_per_stage": (1, 1, 1), "n_conv_per_stage_decoder": (1, 1)}


def move_zero_initialised_norms(net: torch.nn.Module) -> None:
    """nnU-Net zero-initialises the last norm of each residual branch, which blocks the branch's gradient until that
    norm has moved off zero: move it, as one optimiser step would."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".norm" in name and not p.any():
                p.fill_(0.1)


def staged(stage: ViewPipeline, regions: dict, step: int = 0) -> dict:
    return stage(regions, step_key(torch.device("cpu"), seed=0, step=step, rank=0))


def assert_gradients_reach(loss: torch.Tensor, *modules: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    loss.backward()
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad and not any(s in name for s in skip):
                assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def overfit(objective, backbone, batch: dict, steps: int = 200, lr: float = 3e-3) -> tuple[float, float]:
    """Adam on one fixed batch → (first loss, best of the last 10 losses)."""
    params = list(backbone.parameters()) + list(objective.parameters())
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = objective(batch, backbone)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], min(losses[-10:])
