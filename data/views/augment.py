"""Batched intensity augmentation on the training device: gamma, scale/shift, Gaussian noise.

Each sample draws its own parameters from the caller's `CounterRandom`; a transform that is not applied
to a sample gets its identity parameters, so the whole batch is one chain of elementwise ops
(no per-sample branches, no host sync) that compiles, the Gaussian noise's draw included (it fuses into the
kernel that writes the views: no pass of its own). Spatial flips and
rotations are folded into the crop's gather indices instead (`data/views/pipeline.py`): they cost nothing there.
"""

from __future__ import annotations

import torch

from voxfm.data.views.counter_random import CounterRandom


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

    def parameters(self, n: int, rng: CounterRandom) -> dict[str, torch.Tensor]:
        """Per-sample parameters [n] each (identity where a transform is not drawn), and "noise" [n] bool: which
        samples get Gaussian noise."""

        u = rng.rand(n, 6)  # one draw, a column per number

        def draw(column: int, low: float, high: float) -> torch.Tensor:
            return low + (high - low) * u[:, column]

        gamma = torch.where(u[:, 0] < self.gamma_prob, draw(1, *self.gamma_range), 1.0)
        scaled = u[:, 2] < self.scale_prob
        scale = torch.where(scaled, draw(3, *self.scale_range), 1.0)
        shift = torch.where(scaled, draw(4, *self.shift_range), 0.0)
        return {"gamma": gamma, "scale": scale, "shift": shift, "noise": u[:, 5] < self.noise_prob}

    @staticmethod
    def apply(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: [B, C, X, Y, Z] float in [0, 1], p from `parameters` → x ** gamma * scale + shift. Pure: compiles."""
        p = {k: p[k].view(-1, 1, 1, 1, 1).to(x.dtype) for k in ("gamma", "scale", "shift")}
        return x.clamp_min(0.0).pow(p["gamma"]) * p["scale"] + p["shift"]

    def add_noise(self, x: torch.Tensor, flags: torch.Tensor, rng: CounterRandom) -> torch.Tensor:
        """x + N(0, noise_std²) on the samples whose flag is set. Drawn for every voxel: compiled, the draw fuses
        into the kernel that writes x (no extra pass); eager, it is a few full-size passes."""
        if self.noise_prob <= 0 or self.noise_std <= 0:
            return x
        noise = rng.randn(*x.shape).mul_(self.noise_std).to(x.dtype)
        return torch.where(flags.view(-1, *([1] * (x.dim() - 1))), x + noise, x)

    def __call__(self, x: torch.Tensor, p: dict[str, torch.Tensor], rng: CounterRandom) -> torch.Tensor:
        """x: [B, C, X, Y, Z] float in [0, 1], p from `parameters(B, rng)` → augmented x (same shape)."""
        return self.add_noise(self.apply(x, p), p["noise"], rng)
