"""Per-sample random masks over a grid of patches (ViT tokens) or cubes (CNN masked modelling),
drawn on the training device from a `CounterRandom` (inside the views' compiled graph)."""

from __future__ import annotations

import math

import torch

from voxfm.data.stream.crops import triple
from voxfm.data.views.counter_random import CounterRandom, as_key


def _random(key) -> CounterRandom:
    return key if isinstance(key, CounterRandom) else CounterRandom(as_key(key))


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

    def noise(self, batch_size: int, spatial: tuple[int, int, int], rng: CounterRandom) -> torch.Tensor:
        """The random draw behind a mask: [B, N] sort keys, distinct within a row (no ties to break)."""
        g = self.grid(tuple(spatial))
        return rng.ranking_keys(batch_size, g[0] * g[1] * g[2])

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """noise: [B, N] (sort keys or numbers) → mask [B, N] bool, True = hidden: the n_masked cells of lowest noise
        in each row.
        A pure function of its input, so it compiles with the rest of the stage."""
        ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each patch's noise within its sample
        return ranks < self.n_masked(noise.shape[1])

    def __call__(self, batch_size: int, spatial: tuple[int, int, int], key) -> torch.Tensor:
        """→ mask [B, N] bool over the raster-ordered grid of `spatial // patch_size`, True = hidden. key: a key
        tensor, a seeded generator or a `CounterRandom`."""
        return self.from_noise(self.noise(batch_size, spatial, _random(key)))


class BlockMasking:
    """iBOT's masks in 3D: boxes of tokens (sides `min_block`–`max_block` on the patch grid) placed at random until
    a ratio drawn per image from `ratio_range` is hidden (the last box may pass it by less than one box); each
    image is masked with `probability`, else not at all (iBOT masks half the student's global crops).

    On the training device and without a host sync: `noise` draws every box of every image (a fixed number,
    enough for the largest ratio), `from_noise` finds for each token the first box that covers it and keeps the
    boxes up to the one that reaches the image's target — a pure function of the draws, compiled with the views.
    Exactly round(probability · n) images of a batch are masked (as DINOv2's collate does), so the objective picks
    them, and at most `max_hidden` tokens of each, with static shapes."""

    CHUNK = 16  # boxes tested against every token at once: [n, CHUNK, N] booleans at a time

    def __init__(
        self,
        patch_size: int | tuple[int, int, int] = 16,
        ratio_range: tuple[float, float] = (0.1, 0.5),
        probability: float = 0.5,
        min_block: int = 2,
        max_block: int = 3,
    ):
        low, high = (float(r) for r in ratio_range)
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(f"masking.ratio_range={[low, high]}: expected 0 <= low <= high < 1")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"masking.probability={probability}: expected a probability in [0, 1]")
        if not 1 <= min_block <= max_block:
            raise ValueError(f"masking.min_block={min_block}, max_block={max_block}: expected 1 <= min <= max")
        self.patch_size, self.ratio_range, self.probability = triple(patch_size), (low, high), probability
        self.min_block, self.max_block = min_block, max_block

    grid = RandomPatchMasking.grid

    def sides(self, grid: tuple[int, int, int]) -> tuple[list[int], list[int]]:
        high = [min(self.max_block, g) for g in grid]
        return [min(self.min_block, h) for h in high], high

    def boxes(self, grid: tuple[int, int, int]) -> int:
        """Boxes drawn per image: three times the expected number that covers the largest ratio (random boxes
        cover 1 − exp(−k·v/N) of N tokens), so falling short is vanishingly rare (and only ever hides fewer)."""
        low, high = self.sides(grid)
        mean_volume = math.prod([(lo + hi) / 2 for lo, hi in zip(low, high)])  # a list: the views' graph traces it
        n = math.prod(grid)
        return max(4, math.ceil(3 * -math.log(1 - self.ratio_range[1]) * n / mean_volume))

    def n_masked_images(self, n: int) -> int:
        return round(self.probability * n)

    def max_hidden(self, grid: tuple[int, int, int]) -> int:
        """The most tokens one image can hide: its largest target plus less than one box."""
        n = math.prod(grid)
        return min(n, round(self.ratio_range[1] * n) + math.prod(self.sides(grid)[1]) - 1)

    def noise(self, n: int, spatial: tuple[int, int, int], rng: CounterRandom) -> dict[str, torch.Tensor]:
        """Every random number behind `n` masks: box sides and corners [n, K, 3], ratios [n], masked or not [n]."""
        grid = self.grid(tuple(spatial))
        k, dev = self.boxes(grid), rng.device
        low, high = [torch.tensor(v, device=dev) for v in self.sides(grid)]
        sides = low + (rng.rand(n, k, 3) * (high - low + 1)).long()
        room = torch.tensor(grid, device=dev) - sides + 1
        corners = (rng.rand(n, k, 3) * room).long()
        a, b = self.ratio_range
        ratio = a + (b - a) * rng.rand(n)
        masked = rng.ranking_keys(1, n)[0].argsort() < self.n_masked_images(n)
        return {"sides": sides, "corners": corners, "ratio": ratio, "masked": masked}

    def from_noise(self, noise: dict[str, torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
        """→ masks [n, N] bool over the raster-ordered grid, True = hidden."""
        sides, corners = noise["sides"], noise["corners"]
        n, k, dev = sides.shape[0], sides.shape[1], sides.device
        axes = [torch.arange(g, device=dev) for g in grid]
        coords = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).reshape(1, 1, -1, 3)  # [1, 1, N, 3]
        first = torch.full((n, coords.shape[2]), k, dtype=torch.long, device=dev)  # first box covering each token
        for start in range(0, k, self.CHUNK):
            c0, c1 = (
                corners[:, start : start + self.CHUNK, None],
                (corners + sides)[:, start : start + self.CHUNK, None],
            )
            inside = ((coords >= c0) & (coords < c1)).all(dim=-1)  # [n, chunk, N]
            index = torch.arange(start, start + inside.shape[1], device=dev).view(1, -1, 1)
            first = torch.minimum(first, torch.where(inside, index, k).amin(dim=1))
        newly = torch.zeros(n, k + 1, device=dev).scatter_add_(1, first, torch.ones_like(first, dtype=torch.float))
        covered = newly[:, :k].cumsum(dim=1)  # tokens hidden by boxes 0..j
        target = torch.round(noise["ratio"] * coords.shape[2])
        last = (covered < target[:, None]).sum(dim=1)  # the box that reaches the target
        hidden = (first <= last[:, None]) & (first < k)  # never a token no box covers (boxes that fall short)
        return hidden & (target > 0)[:, None] & noise["masked"][:, None]

    def __call__(self, n: int, spatial: tuple[int, int, int], key) -> torch.Tensor:
        return self.from_noise(self.noise(n, spatial, _random(key)), self.grid(tuple(spatial)))
