"""Self-distillation's views, cut on the training device: 2 global and N local crops of each region (DINO's multi-
crop), resized, flipped, rotated, normalised, augmented, and iBOT's block masks on the global crops.

A crop covers a box of its own shape, `scale`^(1/3) of the largest such box in the region (scale: a fraction of its
volume, drawn per crop), placed at random inside the region, with flips of each RAS axis and a 90° rotation in one
plane. All of that is one affine map per crop, drawn from the step's key (`draw`, inside `apply`, so in the views'
compiled graph); `apply` turns the maps into sampling grids and reads every crop of one size with one trilinear
`grid_sample` over the batch — the views of each region are laid side by side along the grid's first axis, so the
region is not copied per view. Crops of different sizes are batched per size (global, local): no padding. Axes are
the volume's RAS axes ([B, C, X, Y, Z]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from voxfm.data.stream.crops import triple
from voxfm.data.views.augment import IntensityAugment
from voxfm.data.views.counter_random import CounterRandom, as_key
from voxfm.data.views.masking import BlockMasking


def crop_maps(
    n: int,
    region: tuple[int, int, int],
    scale: tuple[float, float],
    flip_prob: float,
    rotate_prob: float,
    plane: tuple[int, int] | None,
    rng: CounterRandom,
    size: tuple[int, int, int] = (1, 1, 1),
) -> torch.Tensor:
    """→ [n, 3, 4] affine maps (grid_sample's convention: output coordinates in [-1, 1] → input coordinates, axes
    in (Z, Y, X) order) of n random crops of a region of size `region`, each a box of the crop's shape `size` (the
    largest that fits, scaled by `scale`^(1/3)), so every axis is resampled by the same factor."""
    dev = rng.device
    u = rng.rand(n, 8)  # scale, centre (3), flips (3), transpose: one draw
    fraction = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) ** (1 / 3)
    extent = torch.tensor(region, device=dev, dtype=torch.float32)
    shape = torch.tensor(size, device=dev, dtype=torch.float32)
    fit = (extent / shape).min()  # region voxels per crop voxel of the largest box of that shape
    half = fraction[:, None] * fit * shape / extent  # [n, 3] half-extent along each input axis (1: the whole axis)
    centre = (2 * u[:, 1:4] - 1) * (1 - half)
    flips = u[:, 4:7] < flip_prob
    sign = 1.0 - 2.0 * flips.float()  # [n, 3] per output axis
    transpose = u[:, 7] < (rotate_prob if plane is not None else 0.0)
    perm = torch.eye(3, device=dev).repeat(n, 1, 1)  # [n, in, out]: output axis `out` reads input axis `in`
    if plane is not None:
        p, q = plane
        swap = torch.eye(3, device=dev)[[{p: q, q: p}.get(i, i) for i in range(3)]]
        perm = torch.where(transpose.view(n, 1, 1), swap, perm)
    linear = half[:, :, None] * perm * sign[:, None, :]  # [n, in (X, Y, Z), out (X, Y, Z)]
    theta = torch.cat([linear, centre[:, :, None]], dim=2)
    return theta.flip(1)[:, :, [2, 1, 0, 3]]  # (X, Y, Z) → grid_sample's (W, H, D) = (Z, Y, X) on both sides


def sample_crops(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """x [B, C, *R] float, theta [V·B, 3, 4] view-major → crops [V·B, C, *size], trilinear, in one `grid_sample`."""
    b, c = x.shape[:2]
    v = theta.shape[0] // b
    grid = F.affine_grid(theta, [theta.shape[0], c, *size], align_corners=False)  # [V·B, *size, 3]
    grid = grid.view(v, b, *size, 3).transpose(0, 1).reshape(b, v * size[0], size[1], size[2], 3)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # [B, C, V·s0, ..]
    return out.view(b, c, v, *size).permute(2, 0, 1, 3, 4, 5).reshape(v * b, c, *size)  # view-major


class MultiCropPipeline:
    """Batch {"region": [B, C, *R] stored dtype, "low", "high": [B]} → adds "image" [2B, C, *crop_size] (the global
    crops, view-major), "local" [n_local·B, C, *local_size] (view-major), "n_views" 2, "n_local", and "masks"
    [2B, N] bool (iBOT, True = hidden from the student), "n_masked_images", "max_hidden" when a masking is given."""

    def __init__(
        self,
        crop_size,
        local_size=48,
        n_local: int = 8,
        n_views: int = 2,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        flip_prob: float = 0.5,
        rotate_prob: float = 0.5,
        rotate_plane: tuple[int, int] | None = (0, 1),
        augment: IntensityAugment | None = None,
        masking: BlockMasking | None = None,
    ):
        self.crop_size, self.local_size = triple(crop_size), triple(local_size)
        if n_views != 2:
            raise ValueError(f"views.n_views={n_views}: multi-crop cuts 2 global crops per region")
        if n_local < 0:
            raise ValueError(f"views.n_local={n_local}: expected >= 0")
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"views.{name}={[low, high]}: expected fractions of the region, 0 < low <= high <= 1")
        for name, p in (("flip_prob", flip_prob), ("rotate_prob", rotate_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"views.{name}={p}: expected a probability in [0, 1]")
        for name, size in (("crop_size", self.crop_size), ("local_size", self.local_size)):
            if rotate_plane is not None and size[rotate_plane[0]] != size[rotate_plane[1]]:
                raise ValueError(
                    f"views.rotate_plane={list(rotate_plane)}: views.{name}={list(size)} is not square in that plane"
                )
        self.n_views, self.n_local = n_views, n_local
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.flip_prob, self.rotate_prob = flip_prob, rotate_prob
        self.rotate_plane = None if rotate_plane is None else tuple(rotate_plane)
        self.augment, self.masking = augment, masking
        if masking is not None:
            masking.grid(self.crop_size)  # fails now, not at the first step
            if any(s % p for s, p in zip(self.local_size, masking.patch_size)):
                raise ValueError(
                    f"views.local_size={list(self.local_size)} is not divisible by the patch {list(masking.patch_size)}"
                )

    def region_size_needed(self) -> tuple[int, int, int]:
        return self.crop_size  # a global crop at scale 1 is the whole region, resampled to crop_size

    def check_region(self, region_size) -> None:
        have = triple(region_size)
        if any(h < n for h, n in zip(have, self.crop_size)):
            raise ValueError(f"data.region_size={list(have)} is smaller than the global crop {list(self.crop_size)}")

    def draw(self, b: int, region: tuple[int, int, int], rng: CounterRandom) -> dict:
        """Every random number of a batch of `b` regions: the crops' affine maps, intensity parameters and noise
        flags per crop, the masks' boxes."""
        geometry = (self.flip_prob, self.rotate_prob, self.rotate_plane, rng)
        draws = {
            "global_maps": crop_maps(2 * b, region, self.global_scale, *geometry, size=self.crop_size),
            "local_maps": crop_maps(self.n_local * b, region, self.local_scale, *geometry, size=self.local_size),
        }
        if self.augment is not None:
            for name, n in (("global", 2 * b), ("local", self.n_local * b)):
                draws[f"{name}_intensity"] = self.augment.parameters(n, rng)
        if self.masking is not None:
            draws["mask_noise"] = self.masking.noise(2 * b, self.crop_size, rng)
        return draws

    def apply(
        self,
        region: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        key: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> dict:
        """The whole stage, random draws included (compiled under trainer.compile): region [B, C, *R], low/high [B],
        the step's keys ([STREAMS, 2] int64) → {"image", "local", "masks"}, the crops computed in fp32 and
        written in `dtype` (see `ViewPipeline.apply`)."""
        rng = CounterRandom(key)
        draws = self.draw(region.shape[0], tuple(region.shape[2:]), rng)
        span = (high - low).view(-1, 1, 1, 1, 1)
        x = ((region.float() - low.view(-1, 1, 1, 1, 1)) / span).clamp(0.0, 1.0)
        out = {"image": sample_crops(x, draws["global_maps"], self.crop_size)}
        if self.n_local:
            out["local"] = sample_crops(x, draws["local_maps"], self.local_size)
        for name, crops in (("global", "image"), ("local", "local")):
            if crops in out:
                if self.augment is not None:
                    out[crops] = self.augment(out[crops], draws[f"{name}_intensity"], rng)
                out[crops] = out[crops].to(dtype)
        if self.masking is not None:
            out["masks"] = self.masking.from_noise(draws["mask_noise"], self.masking.grid(self.crop_size))
        return out

    def __call__(self, batch: dict, key, apply=None, dtype: torch.dtype = torch.float32) -> dict:
        """batch → batch with views. key: the step's key tensor (or a seeded `torch.Generator`, for tests); dtype:
        the crops' (`pretrain.training.module.view_dtype`)."""
        region = batch["region"]
        self.check_region(region.shape[2:])
        out = {**batch, **(apply or self.apply)(region, batch["low"], batch["high"], as_key(key), dtype)}
        out["n_views"], out["n_local"] = self.n_views, self.n_local
        if self.masking is not None:  # Python ints: the objective picks masked images and tokens with static shapes
            out["n_masked_images"] = self.masking.n_masked_images(out["masks"].shape[0])
            out["max_hidden"] = self.masking.max_hidden(self.masking.grid(self.crop_size))
        return out
