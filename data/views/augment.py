"""Batched intensity augmentation on the training device: gamma, scale/shift, Gaussian noise.

Each sample draws its own parameters from the caller's generator; a transform that is not applied
to a sample gets its identity parameters, so the whole batch is one chain of elementwise ops
(no per-sample branches, no host sync) that compiles; Gaussian noise is drawn and added only for the samples
that get it (a full-volume draw for every sample was most of the stage's memory traffic). Spatial flips and
rotations are folded into the crop's gather indices instead (`data/views/pipeline.py`): they cost nothing there.
"""

from __future__ import annotations

import torch


def _draw(n: int, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


class IntensityAugment:
    """x in [0, 1] → x ** gamma → x * scale + shift → + N(0, noise_std²), each with its own probability."""

    def __init__(
        self,
        gamma_prob: float = 0.3,
        gamma_range: tuple[float, float] = (0.7, 1.5),
        scale_prob: float = 0.5,
        scale_range: tuple[float, float] = (0.9, 1.1),
        shift_range: tuple[float, float] = (-0.1, 0.1),
        noise_prob: float = 0.2,
        noise_std: float = 0.02,
    ):
        for name, p in (("gamma_prob", gamma_prob), ("scale_prob", scale_prob), ("noise_prob", noise_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name}={p}: expected a probability in [0, 1]")
        if not 0 < gamma_range[0] <= gamma_range[1]:
            raise ValueError(f"augment.gamma_range={list(gamma_range)}: expected 0 < low <= high")
        if noise_std < 0:
            raise ValueError(f"augment.noise_std={noise_std}: expected >= 0")
        self.gamma_prob, self.gamma_range = gamma_prob, tuple(gamma_range)
        self.scale_prob, self.scale_range, self.shift_range = scale_prob, tuple(scale_range), tuple(shift_range)
        self.noise_prob, self.noise_std = noise_prob, noise_std

    def parameters(self, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample parameters [n] each (identity where a transform is not drawn)."""

        def apply(p: float) -> torch.Tensor:
            return torch.rand(n, generator=g, device=g.device) < p

        gamma = torch.where(apply(self.gamma_prob), _draw(n, g, *self.gamma_range), 1.0)
        scaled = apply(self.scale_prob)
        scale = torch.where(scaled, _draw(n, g, *self.scale_range), 1.0)
        shift = torch.where(scaled, _draw(n, g, *self.shift_range), 0.0)
        return {"gamma": gamma, "scale": scale, "shift": shift}

    def noise(self, shape: tuple[int, ...], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Gaussian noise for the samples that get it, drawn for those alone: (rows [k] long, values
        [k, *shape[1:]] already scaled by noise_std) on g's device, or None when no sample does. Which samples is
        decided on the host, from a CPU generator seeded by g's seed (so still a function of (seed, step, rank)):
        k is then a Python int, known without reading a device tensor."""
        if self.noise_prob <= 0 or self.noise_std <= 0:
            return None
        host = torch.Generator().manual_seed(g.initial_seed() + 0x5EED)
        rows = (torch.rand(shape[0], generator=host) < self.noise_prob).nonzero().flatten()
        if rows.numel() == 0:
            return None
        if g.device.type == "cuda":  # a pinned, asynchronous copy: a pageable one waits for the queue
            rows = rows.pin_memory()
        rows = rows.to(g.device, non_blocking=True)
        values = torch.randn((rows.shape[0], *shape[1:]), generator=g, device=g.device).mul_(self.noise_std)
        return rows, values

    @staticmethod
    def apply(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: [B, C, X, Y, Z] float in [0, 1], p from `parameters` → x ** gamma * scale + shift. Pure: compiles."""
        p = {k: v.view(-1, 1, 1, 1, 1).to(x.dtype) for k, v in p.items()}
        return x.clamp_min(0.0).pow(p["gamma"]) * p["scale"] + p["shift"]

    @staticmethod
    def add_noise(x: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Adds `noise` from `noise()` to its rows of x, in place: only those samples are read and written."""
        if noise is not None:
            rows, values = noise
            x.index_add_(0, rows, values.to(x.dtype))
        return x

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x: [B, C, X, Y, Z] float in [0, 1] → augmented x (same shape)."""
        return self.add_noise(self.apply(x, self.parameters(x.shape[0], g)), self.noise(tuple(x.shape), g))
