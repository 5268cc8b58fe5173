"""Views cut on the training device: crop, flip/rotate, normalise, augment and mask whole batches.

CPU workers deliver regions in their stored dtype (`data/stream/regions.py`). Here, per sample and from the
step's key, a function of (seed, step, rank) (`counter_random.py`): a crop offset (two offsets whose crops
overlap by a set fraction, for contrastive learning), flips of each RAS axis and a 90° rotation in one RAS plane.
All of that is folded into the gather indices of a single indexing op, so a batch of views costs
one read of its voxels; normalisation and intensity augmentation follow as elementwise ops.
Axes are the volume's RAS axes ([B, C, X=R, Y=A, Z=S] after `voxfm shard`).
"""

from __future__ import annotations

import torch

from voxfm.data.stream.crops import triple, view_shift
from voxfm.data.views.augment import IntensityAugment
from voxfm.data.views.counter_random import CounterRandom, as_key, uniform_int
from voxfm.data.views.masking import RandomPatchMasking


def crop_views(
    region: torch.Tensor,
    offsets: torch.Tensor,
    size: tuple[int, int, int],
    flips: torch.Tensor,
    transpose: torch.Tensor,
    plane: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """One gather: region [R, C, X, Y, Z] → views [B, C, *size], view i cut from region i % R (B = V·R: every
    view of a batch in one read).

    offsets: [B, 3] crop corner; flips: [B, 3] bool, reverse that axis of the view; transpose: [B] bool,
    swap the two axes of `plane` (size must be equal on them). A transpose followed by a flip is a
    90° rotation, so (flips, transpose) cover every flip and 90° rotation in that plane.
    """
    b, dev = offsets.shape[0], region.device
    idx = []
    for axis in range(3):
        ar = torch.arange(size[axis], device=dev)
        ar = torch.where(flips[:, axis, None], size[axis] - 1 - ar, ar)  # [B, s]
        idx.append(offsets[:, axis, None] + ar)
    shape = [(b, -1, 1, 1), (b, 1, -1, 1), (b, 1, 1, -1)]
    grid = [i.view(*s) for i, s in zip(idx, shape)]
    p, q = plane
    t = transpose.view(b, 1, 1, 1)
    grid_p = torch.where(t, idx[p].view(*shape[q]), grid[p])  # output axis q reads input axis p, and vice versa
    grid_q = torch.where(t, idx[q].view(*shape[p]), grid[q])
    grid[p], grid[q] = grid_p, grid_q
    bi = (torch.arange(b, device=dev) % region.shape[0]).view(b, 1, 1, 1)
    out = region[bi, :, grid[0], grid[1], grid[2]]  # [B, *size, C] (advanced indices first)
    return out.permute(0, 4, 1, 2, 3)


class ViewPipeline:
    """Batch {"region": [B, 1, *R] stored dtype, "low", "high": [B]} → adds "image" [V*B, 1, *crop] float
    (views stacked view-major: sample i's views are rows i, B + i, ...), "offsets" [V, B, 3], "n_views",
    and "mask" [V*B, N] + "n_visible" when a masking is given."""

    def __init__(
        self,
        crop_size,
        n_views: int = 1,
        overlap: float = 0.5,
        flip_prob: float = 0.5,
        rotate_prob: float = 0.5,
        rotate_plane: tuple[int, int] | None = (0, 1),
        augment: IntensityAugment | None = None,
        masking: RandomPatchMasking | None = None,
    ):
        self.crop_size = triple(crop_size)
        if n_views not in (1, 2):
            raise ValueError(f"views.n_views={n_views}; allowed: 1 (masked modelling), 2 (contrastive)")
        if not 0.0 < overlap <= 1.0:
            raise ValueError(f"views.overlap={overlap}: expected a fraction in (0, 1]")
        for name, p in (("flip_prob", flip_prob), ("rotate_prob", rotate_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"views.{name}={p}: expected a probability in [0, 1]")
        if rotate_plane is not None:
            rotate_plane = tuple(rotate_plane)
            if len(rotate_plane) != 2 or not set(rotate_plane) <= {0, 1, 2} or rotate_plane[0] == rotate_plane[1]:
                raise ValueError(f"views.rotate_plane={list(rotate_plane)}: expected two distinct RAS axes of 0, 1, 2")
            if self.crop_size[rotate_plane[0]] != self.crop_size[rotate_plane[1]]:
                raise ValueError(
                    f"views.rotate_plane={list(rotate_plane)}: crop {list(self.crop_size)} is not square in that plane"
                )
        self.n_views, self.overlap = n_views, overlap
        self.flip_prob, self.rotate_prob, self.rotate_plane = flip_prob, rotate_prob, rotate_plane
        self.augment, self.masking = augment, masking
        if masking is not None:
            g = masking.grid(self.crop_size)  # fails now, not at the first step
            masking.n_masked(g[0] * g[1] * g[2])

    @property
    def shift(self) -> tuple[int, int, int]:
        """Per-axis distance between two views' corners: shared volume / view volume = overlap."""
        return view_shift(self.crop_size, self.n_views, self.overlap)

    def region_size_needed(self) -> tuple[int, int, int]:
        return tuple(c + s for c, s in zip(self.crop_size, self.shift))  # type: ignore[return-value]

    def check_region(self, region_size) -> None:
        need, have = self.region_size_needed(), triple(region_size)
        if any(h < n for h, n in zip(have, need)):
            raise ValueError(
                f"data.region_size={list(have)} is too small: {self.n_views} view(s) of "
                f"{list(self.crop_size)} with overlap {self.overlap} need at least {list(need)}"
            )

    def offsets(self, b: int, region: tuple[int, int, int], rng: CounterRandom) -> torch.Tensor:
        """→ [V, B, 3] crop corners inside the region."""
        slack = [r - c - s for r, c, s in zip(region, self.crop_size, self.shift)]
        u = rng.rand(b, 6)  # corners, then which view comes first, per axis
        low = torch.stack([uniform_int(u[:, axis], s) for axis, s in enumerate(slack)], dim=1)  # [B, 3]
        if self.n_views == 1:
            return low[None]
        high = torch.stack([low[:, axis] + s for axis, s in enumerate(self.shift)], dim=1)  # no host-to-device copy
        first_is_low = u[:, 3:] < 0.5
        return torch.stack([torch.where(first_is_low, low, high), torch.where(first_is_low, high, low)])

    def draw(self, b: int, region: tuple[int, int, int], rng: CounterRandom) -> dict:
        """Every random number of a batch of `b` regions: offsets [V, B, 3], flips [V·B, 3], transpose [V·B],
        intensity parameters and noise flags [V·B], mask noise [V·B, N]. Pure tensor ops on the key: inside `apply`,
        so they run in the views' compiled graph."""
        vb = self.n_views * b
        u = rng.rand(vb, 4)  # flips of each axis, transpose
        draws = {
            "offsets": self.offsets(b, region, rng),
            "flips": u[:, :3] < self.flip_prob,
            "transpose": u[:, 3] < self.rotate_prob,
        }
        if self.rotate_plane is None:
            draws["transpose"] = torch.zeros_like(draws["transpose"])
        if self.augment is not None:
            draws["intensity"] = self.augment.parameters(vb, rng)
        if self.masking is not None:
            draws["mask_noise"] = self.masking.noise(vb, self.crop_size, rng)
        return draws

    def apply(
        self,
        region: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        key: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> dict:
        """The whole stage as a pure function of its tensors (one compiled graph under trainer.compile): region
        [B, C, *R] stored dtype, low/high [B], the step's keys ([STREAMS, 2] int64, `counter_random.step_key`) →
        {"image": [V·B, C, *crop] `dtype`, "offsets": [V, B, 3], "mask": [V·B, N]}. Random numbers are drawn here
        too. The image is computed in fp32 and rounded once to `dtype` as it is written (fp16 under a half precision,
        `view_dtype`: half the bytes for the views to write and for every reader of the image)."""
        rng = CounterRandom(key)
        draws = self.draw(region.shape[0], tuple(region.shape[2:]), rng)
        offsets = draws["offsets"].flatten(0, 1)  # [V·B, 3], view-major like the images
        crop = crop_views(
            region, offsets, self.crop_size, draws["flips"], draws["transpose"], self.rotate_plane or (0, 1)
        )
        low, high = low.repeat(self.n_views).view(-1, 1, 1, 1, 1), high.repeat(self.n_views).view(-1, 1, 1, 1, 1)
        x = ((crop.float() - low) / (high - low)).clamp(0.0, 1.0)
        image = x if self.augment is None else self.augment(x, draws["intensity"], rng)
        out = {"image": image.to(dtype), "offsets": draws["offsets"]}
        if self.masking is not None:
            out["mask"] = self.masking.from_noise(draws["mask_noise"])
        return out

    def __call__(self, batch: dict, key, apply=None, dtype: torch.dtype = torch.float32) -> dict:
        """batch → batch with views. key: the step's key tensor (or a seeded `torch.Generator`, for tests); `apply`
        replaces `self.apply` (the training module passes its compiled one); dtype: the image's
        (`pretrain.training.module.view_dtype`)."""
        region = batch["region"]
        self.check_region(region.shape[2:])
        out = {**batch, **(apply or self.apply)(region, batch["low"], batch["high"], as_key(key), dtype)}
        out["n_views"] = self.n_views
        if self.masking is not None:
            n = out["mask"].shape[1]
            out["n_visible"] = n - self.masking.n_masked(n)  # a Python int: objectives slice without a host sync
        return out


ViewStage = ViewPipeline  # the old name, for configs and checkpoints of voxfm 0.1's first releases, until 0.2
