"""Multi-crop views on the device (data/views/multicrop.py): each crop is the affine map it draws — the whole region at
scale 1, flips and the 90° rotation exactly —, global and local crops batched per size, a pure function of the
generator, block masks on the global crops only."""

import pytest
import torch

from voxfm.data.views.augment import IntensityAugment
from voxfm.data.views.counter_random import CounterRandom, as_key
from voxfm.data.views.masking import BlockMasking
from voxfm.data.views.multicrop import MultiCropPipeline, crop_maps, sample_crops


def _regions(b=3, size=24):
    g = torch.Generator().manual_seed(0)
    return {
        "region": torch.randint(-500, 1500, (b, 1, size, size, size), generator=g, dtype=torch.int16),
        "low": torch.zeros(b),
        "high": torch.full((b,), 1000.0),
    }


def test_a_crop_at_scale_one_is_the_region_and_flips_and_rotations_are_exact():
    x = torch.rand(3, 1, 8, 8, 8)
    g = CounterRandom(as_key(1))
    plain = sample_crops(x, crop_maps(6, (8, 8, 8), (1.0, 1.0), 0.0, 0.0, None, g), (8, 8, 8))
    assert torch.allclose(plain, x.repeat(2, 1, 1, 1, 1), atol=1e-6)  # view-major: rows i and 3 + i are region i
    flipped = sample_crops(x, crop_maps(3, (8, 8, 8), (1.0, 1.0), 1.0, 0.0, None, g), (8, 8, 8))
    assert torch.allclose(flipped, x.flip(2, 3, 4), atol=1e-6)
    rotated = sample_crops(x, crop_maps(3, (8, 8, 8), (1.0, 1.0), 0.0, 1.0, (0, 1), g), (8, 8, 8))
    assert torch.allclose(rotated, x.transpose(2, 3), atol=1e-6)


def test_channels_stay_with_their_image_and_a_box_crop_keeps_its_shape():
    x = torch.rand(2, 3, 8, 8, 8)
    g = CounterRandom(as_key(5))
    crops = sample_crops(x, crop_maps(4, (8, 8, 8), (1.0, 1.0), 0.0, 0.0, None, g), (8, 8, 8))
    assert torch.allclose(crops, x.repeat(2, 1, 1, 1, 1), atol=1e-6)  # every channel of image i in row i
    ramp = torch.arange(16.0).view(1, 1, 16, 1, 1).expand(1, 1, 16, 16, 16).contiguous()
    box = sample_crops(ramp, crop_maps(1, (16, 16, 16), (1.0, 1.0), 0.0, 0.0, None, g, size=(8, 8, 4)), (8, 8, 4))
    assert torch.allclose(box[0, 0, 1:, 0, 0] - box[0, 0, :-1, 0, 0], torch.full((7,), 2.0), atol=1e-4)  # X: 16 → 8


def test_a_smaller_scale_reads_a_sub_cube_resampled_to_the_crop():
    ramp = torch.arange(32.0).view(1, 1, 32, 1, 1).expand(1, 1, 32, 32, 32).contiguous()  # value = X index
    g = CounterRandom(as_key(2))
    crops = sample_crops(ramp, crop_maps(1, (32, 32, 32), (0.125, 0.125), 0.0, 0.0, None, g), (8, 8, 8))
    steps = crops[0, 0, 1:, 0, 0] - crops[0, 0, :-1, 0, 0]
    assert torch.allclose(steps, torch.full_like(steps, 2.0), atol=1e-4)  # side 16 voxels → 8: two voxels a step
    assert crops.min() >= 0 and crops.max() <= 31


def test_the_pipeline_batches_per_size_masks_the_global_crops_and_replays_from_its_generator():
    views = MultiCropPipeline(
        16,
        local_size=8,
        n_local=4,
        augment=IntensityAugment(),
        masking=BlockMasking(patch_size=4, ratio_range=(0.2, 0.5), probability=0.5),
    )
    out = views(_regions(), torch.Generator().manual_seed(3))
    assert out["image"].shape == (6, 1, 16, 16, 16) and out["local"].shape == (12, 1, 8, 8, 8)
    assert out["masks"].shape == (6, 64) and int(out["masks"].any(dim=1).sum()) == out["n_masked_images"] == 3
    assert out["n_views"] == 2 and out["n_local"] == 4 and out["max_hidden"] == 32 + 27 - 1
    again = views(_regions(), torch.Generator().manual_seed(3))
    assert all(torch.equal(out[k], again[k]) for k in ("image", "local", "masks"))
    other = views(_regions(), torch.Generator().manual_seed(4))
    assert not torch.equal(out["image"], other["image"])
    half = views(_regions(), torch.Generator().manual_seed(3), dtype=torch.bfloat16)  # a bf16 step's crops
    assert half["image"].dtype == half["local"].dtype == torch.bfloat16
    assert all(torch.equal(half[k], out[k].bfloat16()) for k in ("image", "local"))  # fp32, rounded once
    assert torch.equal(half["masks"], out["masks"])


def test_bad_settings_fail_with_the_key_named():
    with pytest.raises(ValueError, match="views.local_scale"):
        MultiCropPipeline(16, local_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="views.n_views"):
        MultiCropPipeline(16, n_views=3)
    with pytest.raises(ValueError, match="local_size"):
        MultiCropPipeline(16, local_size=6, masking=BlockMasking(patch_size=4))
    with pytest.raises(ValueError, match="smaller than the global crop"):
        MultiCropPipeline(16).check_region((12, 16, 16))
