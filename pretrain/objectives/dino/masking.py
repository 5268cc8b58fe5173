"""iBOT's masks in 3D: boxes of tokens on the patch grid, until `ratio` of the tokens are hidden."""

from __future__ import annotations

import math

import torch


def block_mask(grid: tuple[int, int, int], ratio: float, generator: torch.Generator, min_block: int = 2,
               max_block: int = 3, attempts: int = 100) -> torch.Tensor:
    """→ bool [X, Y, Z], True = hidden: boxes with sides in [min_block, max_block] tokens, placed at random, until
    round(ratio · N) tokens are hidden (the last box may pass the target by less than one box)."""
    mask = torch.zeros(grid, dtype=torch.bool)
    target = round(ratio * math.prod(grid))
    sides_max = [min(max_block, g) for g in grid]
    sides_min = [min(min_block, s) for s in sides_max]
    for _ in range(attempts * max(target, 1)):
        if int(mask.sum()) >= target:
            break
        sides = [int(torch.randint(lo, hi + 1, (1,), generator=generator)) for lo, hi in zip(sides_min, sides_max)]
        corner = [int(torch.randint(0, g - s + 1, (1,), generator=generator)) for g, s in zip(grid, sides)]
        mask[tuple(slice(c, c + s) for c, s in zip(corner, sides))] = True
    return mask


def block_masks(n: int, grid: tuple[int, int, int], ratio_range: tuple[float, float], probability: float,
                generator: torch.Generator, **block) -> torch.Tensor:
    """→ bool [n, X·Y·Z] (raster order): with `probability` an image gets block masks at a ratio drawn uniformly
    from `ratio_range`, else no mask (iBOT masks half the global crops)."""
    out = torch.zeros(n, math.prod(grid), dtype=torch.bool)
    for i in range(n):
        if float(torch.rand((), generator=generator)) < probability:
            low, high = ratio_range
            ratio = low + (high - low) * float(torch.rand((), generator=generator))
            out[i] = block_mask(grid, ratio, generator, **block).flatten()
    return out
