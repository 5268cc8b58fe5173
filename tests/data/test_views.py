"""Device-side views: overlap on coordinates, replay from the step's key, flips/rotations in the RAS frame."""

import pytest
import torch

from voxfm.data.views.augment import IntensityAugment
from voxfm.data.views.counter_random import CounterRandom, step_key
from voxfm.data.views.masking import RandomPatchMasking
from voxfm.data.views.pipeline import ViewPipeline, crop_views


def _g(step=0):
    return step_key(torch.device("cpu"), seed=0, step=step, rank=0)


def _batch(b=6, size=48, dtype=torch.int16):
    region = torch.randint(-1000, 1000, (b, 1, size, size, size)).to(dtype)
    return {
        "region": region,
        "low": torch.full((b,), -1000.0),
        "high": torch.full((b,), 1000.0),
        "modality": ["CT"] * b,
    }


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.8])
def test_two_views_overlap_by_the_configured_fraction(overlap):
    stage = ViewPipeline(24, n_views=2, overlap=overlap)
    region = stage.region_size_needed()
    offsets = stage.offsets(64, region, CounterRandom(_g()))  # [2, B, 3]
    shared = (24 - (offsets[0] - offsets[1]).abs()).clamp_min(0).prod(dim=1) / 24**3
    assert torch.allclose(shared, torch.full_like(shared, overlap), atol=0.04)
    assert (offsets >= 0).all() and (offsets + 24 <= torch.tensor(region)).all()
    # both orders occur on each axis: the second view is not always "after" the first
    assert ((offsets[0] < offsets[1]).any(0) & (offsets[0] > offsets[1]).any(0)).all()


def test_same_key_same_views_and_masks():
    stage = ViewPipeline(
        16, n_views=2, overlap=0.5, augment=IntensityAugment(), masking=RandomPatchMasking(0.75, patch_size=8)
    )
    batch = _batch(size=stage.region_size_needed()[0])
    a, b, c = stage(batch, _g(3)), stage(batch, _g(3)), stage(batch, _g(4))
    assert a["image"].shape == (12, 1, 16, 16, 16) and a["image"].dtype == torch.float32
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    assert a["mask"].shape == (12, 8) and (a["mask"].sum(1) == 6).all() and a["n_visible"] == 2


def test_half_precision_views_are_the_fp32_views_rounded_once():
    """Under a half precision the views are written in its half type (half the bytes for them and every reader):
    computed in fp32, augmentation and noise included, and rounded once, so they equal the fp32 views rounded."""
    stage = ViewPipeline(16, augment=IntensityAugment(noise_prob=1.0), masking=RandomPatchMasking(0.75, patch_size=8))
    batch = _batch(size=stage.region_size_needed()[0])
    full = stage(batch, _g(5))
    for dtype in (torch.bfloat16, torch.float16):
        half = stage(batch, _g(5), dtype=dtype)
        assert half["image"].dtype == dtype and torch.equal(half["image"], full["image"].to(dtype))
        assert torch.equal(half["mask"], full["mask"]) and torch.equal(half["offsets"], full["offsets"])


def _asymmetric(size=8):
    """A marker only at the right (high x), anterior (high y), superior (high z) corner, a ramp along x."""
    v = torch.zeros(1, 1, size, size, size)
    v += torch.arange(size).view(1, 1, size, 1, 1) / size  # R–L ramp
    v[..., -2:, -2:, -2:] = 5.0
    return v


def test_flips_and_rotations_act_on_the_ras_axes():
    v = _asymmetric()
    off = torch.zeros(1, 3, dtype=torch.long)
    no = torch.zeros(1, 3, dtype=torch.bool)

    def view(flips=(False, False, False), transpose=False, plane=(0, 1)):
        return crop_views(v, off, (8, 8, 8), torch.tensor([flips]), torch.tensor([transpose]), plane)

    assert torch.equal(view(), v)
    flip_r = view((True, False, False))
    assert torch.equal(flip_r, v.flip(2)) and flip_r[0, 0, 0, 7, 7] == 5.0  # marker moved to the left
    assert torch.equal(view((False, False, True)), v.flip(4))  # superior ↔ inferior
    # transpose + flip = a 90° rotation about the S axis: the right-anterior marker goes right-posterior
    rotated = view((True, False, False), transpose=True)
    assert torch.equal(rotated, torch.rot90(v, -1, dims=(2, 3)))
    assert rotated[0, 0, 7, 0, 7] == 5.0 and rotated[0, 0, 7, 7, 7] != 5.0
    assert torch.equal(view(no[0].tolist(), transpose=True), v.transpose(2, 3))
    # the ramp along R now runs along A: a rotation in the axial plane leaves S untouched
    assert torch.equal(view(transpose=True)[0, 0, 0, :, 0], v[0, 0, :, 0, 0])
    assert torch.equal(view(transpose=True, plane=(1, 2)), v.transpose(3, 4))


def test_crop_reads_the_offset_window_and_normalises():
    stage = ViewPipeline(8, flip_prob=0.0, rotate_prob=0.0)
    batch = _batch(b=2, size=12)
    out = stage(batch, _g())
    off = out["offsets"][0]
    for i in range(2):
        x, y, z = off[i].tolist()
        raw = batch["region"][i, 0, x : x + 8, y : y + 8, z : z + 8].float()
        assert torch.allclose(out["image"][i, 0], ((raw + 1000) / 2000).clamp(0, 1))


def test_intensity_augmentation_is_per_sample_and_identity_when_off():
    x = torch.rand(8, 1, 4, 4, 4)
    off = IntensityAugment(gamma_prob=0, scale_prob=0, noise_prob=0)
    rng = CounterRandom(_g())
    assert torch.equal(off(x, off.parameters(8, rng), rng), x)
    p = IntensityAugment(gamma_prob=1, scale_prob=1, noise_prob=0).parameters(8, CounterRandom(_g()))
    assert p["gamma"].unique().numel() == 8 and ((p["scale"] >= 0.9) & (p["scale"] <= 1.1)).all()


def test_bad_view_settings_fail_fast():
    with pytest.raises(ValueError, match="views.n_views=3"):
        ViewPipeline(16, n_views=3)
    with pytest.raises(ValueError, match="views.overlap=0"):
        ViewPipeline(16, n_views=2, overlap=0)
    with pytest.raises(ValueError, match="not square"):
        ViewPipeline([16, 16, 8], rotate_plane=(1, 2))
    with pytest.raises(ValueError, match="data.region_size=\\[16, 16, 16\\] is too small"):
        ViewPipeline(16, n_views=2, overlap=0.5).check_region(16)
    with pytest.raises(ValueError, match="not divisible by the masking patch_size"):
        ViewPipeline(16, masking=RandomPatchMasking(0.5, patch_size=5))


def test_noise_goes_to_the_samples_drawn_for_it_with_its_spread_and_replays():
    x = torch.full((64, 1, 8, 8, 8), 0.5)
    augment = IntensityAugment(gamma_prob=0, scale_prob=0, noise_prob=0.5, noise_std=0.1)

    def noisy(key):
        rng = CounterRandom(key)
        p = augment.parameters(64, rng)
        return p["noise"], augment(x, p, rng)

    flags, out = noisy(_g())
    assert 16 < int(flags.sum()) < 48
    assert torch.equal((out != x).flatten(1).any(1), flags)  # the samples drawn for noise, and those alone
    delta = (out - x)[flags]
    assert abs(float(delta.mean())) < 0.005 and abs(float(delta.std()) - 0.1) < 0.005  # N(0, noise_std²)
    assert torch.equal(noisy(_g())[1], out) and not torch.equal(noisy(_g(1))[1], out)
    assert torch.equal(IntensityAugment(noise_prob=0).add_noise(x, flags, CounterRandom(_g())), x)


def test_all_views_come_from_one_draw_and_a_pure_apply():
    stage = ViewPipeline(
        16,
        n_views=2,
        overlap=0.5,
        augment=IntensityAugment(noise_prob=0),
        masking=RandomPatchMasking(0.75, patch_size=8),
    )
    batch = _batch(b=3, size=stage.region_size_needed()[0])
    draws = stage.draw(3, stage.region_size_needed(), CounterRandom(_g(5)))
    assert draws["offsets"].shape == (2, 3, 3) and draws["flips"].shape == (6, 3)
    assert draws["mask_noise"].shape == (6, 8)
    applied = stage.apply(batch["region"], batch["low"], batch["high"], _g(5))  # draws, then cuts, from the key
    called = stage(batch, _g(5))
    assert torch.equal(applied["image"], called["image"]) and torch.equal(applied["mask"], called["mask"])
    assert torch.equal(called["offsets"], draws["offsets"])
    # view v of sample i is row v * B + i: the second views are cut from the same regions as the first
    first = crop_views(batch["region"], draws["offsets"][1], (16, 16, 16), draws["flips"][3:], draws["transpose"][3:])
    normalised = ((first.float() + 1000) / 2000).clamp(0, 1)
    expected = IntensityAugment.apply(normalised, {k: v[3:] for k, v in draws["intensity"].items()})
    assert torch.allclose(called["image"][3:], expected, atol=1e-6)
