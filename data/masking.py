"""Per-sample random masks over a grid of patches (ViT tokens) or cubes (CNN masked modelling),
drawn on the training device with an explicit generator."""

from __future__ import annotations

import torch

from data.crops import triple


class RandomPatchMasking:
    """Hides round(mask_ratio * N) random cells of `patch_size` voxels of each sample independently.

    Every sample hides the same number of cells so visible tokens stack into [B, n_visible, C]
    and gather indices have a static shape (no host sync, compile-friendly).
    """

    def __init__(self, mask_ratio: float = 0.75, patch_size: int | tuple[int, int, int] = 16):
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: expected a fraction strictly between 0 and 1")
        self.mask_ratio, self.patch_size = mask_ratio, triple(patch_size)

    def grid(self, spatial: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(s % p for s, p in zip(spatial, self.patch_size)):
            raise ValueError(f"crop {list(spatial)} is not divisible by the masking patch_size {list(self.patch_size)}")
        return tuple(s // p for s, p in zip(spatial, self.patch_size))  # type: ignore[return-value]

    def n_masked(self, n_patches: int) -> int:
        n_masked = round(self.mask_ratio * n_patches)
        if not 0 < n_masked < n_patches:
            raise ValueError(f"mask_ratio={self.mask_ratio} leaves no visible or no hidden patch of {n_patches}")
        return n_masked

    def noise(self, batch_size: int, spatial: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
        """The random draw behind a mask: [B, N] uniform numbers (eager: compiled code takes no generator)."""
        g = self.grid(tuple(spatial))
        return torch.rand(batch_size, g[0] * g[1] * g[2], generator=generator, device=generator.device)

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """noise: [B, N] → mask [B, N] bool, True = hidden: the n_masked cells of lowest noise in each row.
        A pure function of its input, so it compiles with the rest of the stage."""
        ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch's noise within its sample
        return ranks < self.n_masked(noise.shape[1])

    def __call__(self, batch_size: int, spatial: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
        """→ mask [B, N] bool over the raster-ordered grid of `spatial // patch_size`, True = hidden."""
        return self.from_noise(self.noise(batch_size, spatial, generator))
