"""DICOM series: grouped by SeriesInstanceUID whatever the names, ordered by position, rescaled, LPS → RAS."""

import json
import os
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.dicom_series import write_series
from voxfm.data.ingest import payload
from voxfm.data.ingest.dicom import load_series
from voxfm.data.ingest.run import run_shard
from voxfm.data.ingest.volumes import RejectedVolume
from voxfm.data.phantoms import phantom


def _shard_voxels(out, sample):
    with tarfile.open(out / sample["shard"]) as tar:
        return payload.decode(tar.extractfile(f"{sample['key']}.image.b2").read())


def _sources(real_data_dir):
    """(name, modality, voxels, affine): a CT phantom in LPS always; the real CT head and the real coronal (LSA)
    MRI when $VOXFM_REAL_DATA is set."""
    data, _ = phantom((40, 36, 24), "CT", np.random.default_rng(3))
    yield "phantom_lps", "CT", data, np.diag([-1.2, -0.9, 2.5, 1.0]) + np.array([[0, 0, 0, 30.0]] * 3 + [[0, 0, 0, 0]])
    if real_data_dir is not None:
        for name, modality in (("ct_head_invesalius", "CT"), ("mri_t1_itk_kmeans", "MR")):
            img = nib.load(real_data_dir / f"{name}.nii.gz")
            yield name, modality, np.asanyarray(img.dataobj), img.affine


@pytest.fixture
def real_dir():
    """Like conftest's real_data, without skipping: the phantom case runs either way."""
    return Path(os.environ["VOXFM_REAL_DATA"]) if os.environ.get("VOXFM_REAL_DATA") else None


def test_series_with_shuffled_names_equals_the_nifti_it_came_from(tmp_path, real_dir):
    for name, modality, data, affine in _sources(real_dir):
        src = tmp_path / name
        files = write_series(data, affine, src / "dicom", np.random.default_rng(0), modality=modality)
        volume = load_series([str(f) for f in files], max_voxels=10**9)  # files in random order
        np.testing.assert_array_equal(volume.data, data)
        np.testing.assert_allclose(volume.affine, affine, atol=1e-4)

        nib.save(nib.Nifti1Image(data, affine), src / f"{name}.nii.gz")
        out = tmp_path / f"{name}_shards"
        report = run_shard(str(src), str(out), {}, progress=False, workers=2)
        assert report["n_inputs"] == 2 == report["n_sharded"], report
        by_kind = {s["n_files"] > 1: s for s in json.loads((out / "index.json").read_text())["samples"]}
        series, nifti = by_kind[True], by_kind[False]
        assert series["n_files"] == data.shape[2] and series["modality"] == modality
        np.testing.assert_array_equal(_shard_voxels(out, series), _shard_voxels(out, nifti))
        np.testing.assert_allclose(series["affine"], nifti["affine"], atol=1e-4)


def _series(tmp_path, shape=(24, 20, 12)):
    data, _ = phantom(shape, "CT", np.random.default_rng(1))
    return [str(f) for f in write_series(data, np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "s", np.random.default_rng(2))]


def _edit(path, **tags):
    ds = pydicom.dcmread(path)
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path)


def _by_position(files):
    return sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))


@pytest.mark.parametrize(
    "damage,reason",
    [
        ("tilt", "gantry tilt"),
        ("missing", "missing or uneven slices"),
        ("orientation", "mixes slice orientations"),
        ("multiframe", "multi-frame DICOM object"),
        ("duplicate", "several slices at one position"),
    ],
)
def test_series_that_are_not_one_volume_are_rejected_with_their_reason(tmp_path, damage, reason):
    files = _by_position(_series(tmp_path))
    if damage == "tilt":  # each slice shifts 0.5 mm along y per 2 mm step: a 14° tilt
        for k, f in enumerate(files):
            _edit(f, ImagePositionPatient=[0.0, -0.5 * k, 2.0 * k])
    elif damage == "missing":
        files.pop(5)
    elif damage == "orientation":
        _edit(files[3], ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    elif damage == "multiframe":
        _edit(files[0], NumberOfFrames=3)
    else:
        _edit(files[4], ImagePositionPatient=pydicom.dcmread(files[3]).ImagePositionPatient)
    with pytest.raises(RejectedVolume, match=reason):
        load_series(files, max_voxels=10**9)


def test_a_file_without_rows_rejects_its_series_and_the_good_series_beside_it_is_sharded(tmp_path):
    """Issue 13 item 6: an AttributeError from one file stopped `voxfm shard` for every input."""
    data, _ = phantom((24, 20, 12), "CT", np.random.default_rng(1))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    write_series(data, affine, tmp_path / "in" / "good", np.random.default_rng(2), patient="A")
    bad = write_series(data, affine, tmp_path / "in" / "bad", np.random.default_rng(3), patient="B")
    ds = pydicom.dcmread(bad[0])
    del ds.Rows
    ds.save_as(bad[0])
    report = run_shard(str(tmp_path / "in"), str(tmp_path / "out"), {"min_shape": 4}, progress=False, workers=1)
    assert report["n_inputs"] == 2 == report["n_sharded"] + report["n_rejected"] and report["n_sharded"] == 1
    (rejected,) = report["rejected"]
    assert rejected["path"].endswith("bad") and rejected["reason"] == f"DICOM slice {bad[0].name} has no Rows"
