import nibabel as nib
import numpy as np
import pytest

from voxfm.data.ingest.preprocess import PreprocessOptions, normalise, preprocess, uncrop
from voxfm.data.ingest.volumes import RejectedVolume, Volume, load_volume

TINY = {"foreground_crop": False, "min_shape": 1}  # keep the whole of a test volume smaller than real scans


def _world_of_max(data, affine):
    idx = np.array(np.unravel_index(np.argmax(data), data.shape) + (1,))
    return (affine @ idx)[:3]


def test_lps_volume_becomes_ras_at_target_spacing_and_keeps_world_positions():
    data = np.zeros((20, 30, 10), np.int16) - 1000
    data[5, 7, 3] = 2000  # one bright voxel: it must stay at the same world position
    affine = np.diag([-2.0, -1.0, 3.0, 1.0])  # LPS, 2 x 1 x 3 mm
    vol = Volume(data=data, affine=affine, path="x.nii")
    image, label, meta = preprocess(vol, "CT", PreprocessOptions(spacing=(1.0, 1.0, 1.0), foreground_crop=False))
    assert meta["orientation"] == "RAS" and meta["original_orientation"] == "LPS"
    assert meta["spacing"] == [1.0, 1.0, 1.0]
    assert meta["original_spacing"] == [2.0, 1.0, 3.0]
    assert image.dtype == np.int16 and label is None
    assert image.shape == (40, 30, 30)  # n * old / new: the voxels cover the same extent
    np.testing.assert_allclose(_world_of_max(image, np.array(meta["affine"])), _world_of_max(data, affine), atol=1.01)


def test_label_is_resampled_nearest_neighbour_on_the_image_grid():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (16, 16, 16)).astype(np.uint8)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image = Volume(data=rng.normal(size=(16, 16, 16)).astype(np.float32), affine=affine, path="i")
    opts = PreprocessOptions(spacing=(1.5, 1.5, 1.5), **TINY)
    _, out, meta = preprocess(image, "MR", opts, Volume(labels, affine, "l"))
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= set(range(5))
    assert meta["label_classes"] == sorted(np.unique(out).tolist())
    assert out.shape == tuple(meta["shape"])


def test_label_on_another_grid_is_rejected():
    a = Volume(np.ones((8, 8, 8), np.float32) * np.arange(8), np.eye(4), "i")
    with pytest.raises(RejectedVolume, match="label grid"):
        preprocess(a, "MR", PreprocessOptions(), Volume(np.zeros((8, 8, 9), np.uint8), np.eye(4), "l"))


def test_normalisation_ct_window_and_mr_percentiles():
    ct = Volume(np.linspace(-2000, 3000, 4096).reshape(16, 16, 16).astype(np.int16), np.eye(4), "ct")
    _, _, meta = preprocess(ct, "CT", PreprocessOptions(spacing=(1.0, 1.0, 1.0), **TINY), None, "manifest")
    assert meta["modality"] == "CT" and meta["modality_source"] == "manifest" and not meta["modality_inferred"]
    assert meta["normalisation"] == {"scheme": "window", "low": -1000.0, "high": 1000.0}
    out = normalise(np.array([-3000, -1000, 0, 1000, 5000], np.int16), meta["normalisation"])
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    mr = Volume(np.arange(4096, dtype=np.float32).reshape(16, 16, 16), np.eye(4), "mr")
    _, _, meta = preprocess(mr, "MR", PreprocessOptions(spacing=(1.0, 1.0, 1.0), percentiles=(1.0, 99.0), **TINY))
    assert meta["normalisation"]["scheme"] == "percentile"
    assert meta["normalisation"]["low"] == pytest.approx(np.percentile(np.arange(4096), 1.0), rel=1e-3)


def test_foreground_points_lie_in_the_foreground():
    data = np.zeros((20, 20, 20), np.float32)
    data[5:10, 5:10, 5:10] = 100.0
    data[0, 0, 0] = 0.5  # keep percentiles away from a constant image
    image, _, meta = preprocess(Volume(data, np.eye(4), "x"), "MR", PreprocessOptions(spacing=(1.0, 1.0, 1.0)))
    pts = np.array(meta["foreground_points"])
    assert len(pts) > 0 and all(image[tuple(p)] == 100.0 for p in pts)


def test_foreground_crop_keeps_the_body_with_its_margin_and_can_be_undone():
    rng = np.random.default_rng(0)
    data = rng.normal(-1000, 5, (60, 50, 40)).astype(np.int16)  # air
    data[20:30, 10:25, 5:15] = 40  # a body
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    opts = PreprocessOptions(spacing=(1.0, 1.0, 1.0), crop_margin_mm=4.0)
    full, _, full_meta = preprocess(
        Volume(data, affine, "ct"), "CT", PreprocessOptions(spacing=(1.0,) * 3, foreground_crop=False)
    )
    image, _, meta = preprocess(Volume(data, affine, "ct"), "CT", opts)
    assert image.size < full.size / 5 and (image == 40).sum() == (full == 40).sum()  # all of the body is kept
    assert meta["crop"]["uncropped_shape"] == list(full.shape) and full_meta["crop"] is None
    body = np.argwhere(image == 40)
    assert body.min(axis=0).min() >= 4 and (np.array(image.shape) - 1 - body.max(axis=0)).min() >= 4  # margins
    restored = uncrop(image, meta, fill=-1000)
    np.testing.assert_array_equal(restored[full == 40], 40)
    assert restored.shape == full.shape
    # the cropped grid keeps world positions: its affine is the full affine shifted by the crop offset
    corner = np.array(meta["crop"]["offset"] + [1])
    np.testing.assert_allclose(np.array(meta["affine"])[:, 3], np.array(full_meta["affine"]) @ corner, atol=1e-6)


def test_too_small_after_foreground_crop_is_rejected():
    data = np.zeros((40, 40, 40), np.float32)
    data[20:23, 20:23, 20:23] = 50.0  # a 3-voxel speck
    with pytest.raises(RejectedVolume, match="too small after foreground crop"):
        opts = PreprocessOptions(spacing=(1.0,) * 3, crop_margin_mm=2.0)
        preprocess(Volume(data, np.eye(4), "x"), "MR", opts, None, "manifest")  # a manifest: no label-map check


@pytest.mark.parametrize("shape,reason", [((4, 4, 4, 3), "not a 3D volume"), ((4, 4, 4), "constant volume")])
def test_unusable_volumes_are_rejected_with_reason(tmp_path, shape, reason):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    with pytest.raises(RejectedVolume, match=reason):
        load_volume(path, max_voxels=10**9)


def test_oversized_header_is_rejected_before_reading(tmp_path):
    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), path)
    with pytest.raises(RejectedVolume, match="too large"):
        load_volume(path, max_voxels=999)


def test_options_fail_fast_naming_the_argument():
    with pytest.raises(ValueError, match="preprocess.spacing"):
        PreprocessOptions(spacing=(1.0, 0.0, 1.0))


def test_integer_sources_are_stored_in_native_byte_order():
    from voxfm.data.ingest.preprocess import cast_like

    out = cast_like(np.array([[[1.4, -2.6]]], np.float32), np.dtype(">i2"))
    assert out.dtype == np.dtype("int16") and out.dtype.isnative and out.tolist() == [[[1, -3]]]


def test_resampled_grid_is_centred_in_world_space_whatever_the_storage_order():
    """Label ties (0.75 -> 1.5 mm puts every output voxel between two inputs) break the same way too."""
    from voxfm.data.ingest.resample import resample

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (20, 17, 11)).astype(np.uint8)
    image = rng.normal(size=labels.shape).astype(np.float32)
    affine = np.diag([0.75, 0.8, 1.3, 1.0])
    affine[:3, 3] = [4.0, -7.0, 2.0]
    flipped = affine @ np.array([[-1, 0, 0, 19], [0, 1, 0, 0], [0, 0, -1, 10], [0, 0, 0, 1.0]])  # stored LAI
    for data, label in ((labels, True), (image, False)):
        out, out_affine = resample(data, affine, (1.5,) * 3, label)
        other, other_affine = resample(np.asfortranarray(data[::-1, :, ::-1]), flipped, (1.5,) * 3, label)
        np.testing.assert_array_equal(other, out)
        np.testing.assert_allclose(other_affine, out_affine, atol=1e-9)
    assert out.shape == (10, 9, 9)  # floor(n · old / new)
    centre = (np.array(labels.shape) - 1) / 2
    np.testing.assert_allclose(out_affine @ [*((np.array(out.shape) - 1) / 2), 1], affine @ [*centre, 1])
