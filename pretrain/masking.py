"""Per-sample random patch masks, drawn on the training device with an explicit generator."""

from __future__ import annotations

import torch


class RandomPatchMasking:
    """Hides round(mask_ratio * N) random patches of each sample independently.

    Every sample hides the same number of patches so visible tokens stack into [B, n_visible, C].
    """

    def __init__(self, mask_ratio: float = 0.75):
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: expected a fraction strictly between 0 and 1")
        self.mask_ratio = mask_ratio

    def __call__(self, batch_size: int, n_patches: int, generator: torch.Generator) -> torch.Tensor:
        """→ mask [B, N] bool, True = hidden, on the generator's device."""
        n_masked = round(self.mask_ratio * n_patches)
        if not 0 < n_masked < n_patches:
            raise ValueError(f"mask_ratio={self.mask_ratio} leaves no visible or no hidden patch of {n_patches}")
        noise = torch.rand(batch_size, n_patches, generator=generator, device=generator.device)
        ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch's noise within its sample
        return ranks < n_masked
