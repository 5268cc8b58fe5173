import json
import os
import shutil
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxfm.data.ingest.layouts import discover
from voxfm.data.ingest.run import run_shard
from voxfm.data.phantoms import phantom


def _folder_with_bad_files(tmp_path, phantom_dir):
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(phantom_dir.glob("phantom00[0-2]_??.nii.gz")):
        shutil.copy(p, src / p.name)
    (src / "broken.nii.gz").write_bytes(b"not a nifti file")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), src / "fmri.nii.gz")
    return src


def test_every_input_is_sharded_or_rejected_with_a_reason(tmp_path, phantom_dir):
    src = _folder_with_bad_files(tmp_path, phantom_dir)
    out = tmp_path / "shards"
    report = run_shard(str(src), str(out), {}, progress=False)
    assert report["n_inputs"] == 5
    assert report["n_sharded"] == 3 and report["n_rejected"] == 2
    assert report["n_inputs"] == report["n_sharded"] + report["n_rejected"]
    reasons = {r["path"].split("/")[-1]: r["reason"] for r in report["rejected"]}
    assert reasons["broken.nii.gz"].startswith("unreadable")
    assert "not a 3D volume" in reasons["fmri.nii.gz"]
    assert json.loads((out / "report.json").read_text()) == report

    index = json.loads((out / "index.json").read_text())
    assert len(index["samples"]) == 3
    for s in index["samples"]:
        assert s["orientation"] == "RAS" and s["spacing"] == [1.5, 1.5, 1.5]
        assert s["modality"] in ("CT", "MR") and len(s["content_hash"]) == 64
    with tarfile.open(out / index["shards"][0]["name"]) as tar:
        names = tar.getnames()
    assert sum(n.endswith(".image.b2") for n in names) == 3 and sum(n.endswith(".json") for n in names) == 3


@pytest.mark.slow
def test_rerun_skips_finished_work_and_new_inputs_are_appended(tmp_path, phantom_dir):
    src = _folder_with_bad_files(tmp_path, phantom_dir)
    out = tmp_path / "shards"
    run_shard(str(src), str(out), {}, progress=False)
    again = run_shard(str(src), str(out), {}, progress=False)
    assert again["n_skipped"] == 3 and again["n_new"] == 0 and again["n_shards"] == 1
    shutil.copy(phantom_dir / "phantom003_mr.nii.gz", src / "new.nii.gz")
    more = run_shard(str(src), str(out), {}, progress=False)
    assert more["n_new"] == 1 and more["n_sharded"] == 4 and more["n_shards"] == 2
    assert len(json.loads((out / "index.json").read_text())["samples"]) == 4


def test_other_settings_into_the_same_output_are_refused(tmp_path, phantom_dir):
    src = _folder_with_bad_files(tmp_path, phantom_dir)
    run_shard(str(src), str(tmp_path / "s"), {}, progress=False)
    with pytest.raises(ValueError, match="other settings") as err:
        run_shard(str(src), str(tmp_path / "s"), {"spacing": [2.0, 2.0, 2.0], "frames": "first"}, progress=False)
    assert "(preprocess.frames: reject → first; preprocess.spacing: [1.5, 1.5, 1.5] → [2.0, 2.0, 2.0])" in str(
        err.value
    )


def test_small_shard_size_splits_into_several_shards(tmp_path, phantom_dir):
    # 6 phantoms, each beside its <name>_label map: paired, never sharded as images of their own
    report = run_shard(str(phantom_dir), str(tmp_path / "s"), {}, shard_max_mb=0.01, progress=False)
    assert report["n_sharded"] == 6 and report["n_shards"] > 1
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert sum(s["n_samples"] for s in index["shards"]) == 6
    assert all(s["label_path"] == s["source_path"].replace(".nii.gz", "_label.nii.gz") for s in index["samples"])


def test_manifest_columns_are_read_and_checked(tmp_path, phantom_dir):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"path,modality,dataset,subject,label\n"
        f"{phantom_dir}/phantom001_mr.nii.gz,mri,ds,s1,{phantom_dir}/phantom001_mr_label.nii.gz\n"
    )
    found = discover(str(manifest))
    (vol,) = found.nifti
    assert found.ignored == [] and found.dicom_files == []
    assert vol.modality == "MR" and vol.dataset == "ds" and vol.subject == "s1" and vol.label.endswith("label.nii.gz")
    manifest.write_text("path,modality\nx.nii.gz,XR\n")
    with pytest.raises(ValueError, match="modality='XR'"):
        discover(str(manifest))
    manifest.write_text("file\nx.nii.gz\n")
    with pytest.raises(ValueError, match="`path` column"):
        discover(str(manifest))


def test_implausible_spacing_is_rejected_from_the_header_and_every_file_is_accounted_for(tmp_path, phantom_dir):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(phantom_dir / "phantom000_ct.nii.gz", src / "good.nii.gz")
    data = np.random.default_rng(0).normal(size=(32, 32, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.9, 53.0, 1.0])), src / "thick_slices.nii.gz")  # 53 mm slices
    nib.save(nib.Nifti1Image(data, np.diag([0.4, 0.4, 6.0, 1.0])), src / "anisotropic.nii.gz")  # 15:1
    (src / "notes.txt").write_text("not an image")
    (src / "sub").mkdir()
    (src / "sub" / "scan.dcm").write_bytes(b"DICM")
    report = run_shard(str(src), str(tmp_path / "out"), {}, progress=False)
    assert report["n_inputs"] == 3 == report["n_sharded"] + report["n_rejected"] and report["n_sharded"] == 1
    reasons = {r["path"].split("/")[-1]: r["reason"] for r in report["rejected"]}
    assert reasons["thick_slices.nii.gz"] == (
        "implausible spacing: [0.9, 0.9, 53.0] mm is outside preprocess.spacing_bounds=[0.1, 10.0]"
    )
    assert reasons["anisotropic.nii.gz"] == (
        "implausible spacing: [0.4, 0.4, 6.0] mm is more anisotropic than preprocess.max_anisotropy=10.0"
    )
    assert report["rejected_by_reason"] == {"implausible spacing": 2}
    assert report["n_ignored"] == 2 and sorted(p.split("/")[-1] for p in report["ignored"]) == ["notes.txt", "scan.dcm"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["ignored"] == report["ignored"]


def test_bad_spacing_settings_fail_fast(tmp_path, phantom_dir):
    with pytest.raises(ValueError, match="preprocess.spacing_bounds=\\[5.0, 1.0\\]"):
        run_shard(str(phantom_dir), str(tmp_path / "o"), {"spacing_bounds": [5.0, 1.0]}, progress=False)


@pytest.mark.parametrize("mode,expected", [("reject", 0), ("first", 1), ("all", 3)])
def test_4d_series_follow_preprocess_frames(tmp_path, mode, expected):
    src = tmp_path / "in"
    src.mkdir()
    series = np.random.default_rng(0).normal(100, 20, size=(20, 20, 12, 3)).astype(np.float32)
    series[..., 2] += 500  # frames differ, so each sample must hold its own frame
    nib.save(nib.Nifti1Image(series, np.diag([2.0, 2.0, 2.0, 1.0])), src / "fmri.nii.gz")
    out = tmp_path / "out"
    report = run_shard(str(src), str(out), {"frames": mode, "spacing": [2.0, 2.0, 2.0], "min_shape": 8}, progress=False)
    assert report["n_inputs"] == 1 == report["n_sharded"] + report["n_rejected"]
    samples = json.loads((out / "index.json").read_text())["samples"] if report["n_sharded"] else []
    assert len(samples) == expected == report["n_new_samples"]
    if mode == "reject":
        assert "preprocess.frames=first or all" in report["rejected"][0]["reason"]
        return
    assert [s["frame"] for s in samples] == list(range(expected))
    from voxfm.data.ingest import payload

    with tarfile.open(out / samples[-1]["shard"]) as tar:
        frame = payload.decode(tar.extractfile(f"{samples[-1]['key']}.image.b2").read())
    assert abs(float(frame.mean()) - float(series[..., expected - 1].mean())) < 1.0


def test_any_exception_from_one_input_rejects_it_with_type_and_message(tmp_path, phantom_dir, monkeypatch):
    import voxfm.data.ingest.units

    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(phantom_dir.glob("phantom00[0-1]_??.nii.gz")):
        shutil.copy(p, src / p.name)
    real = voxfm.data.ingest.units.preprocess

    def flaky(volume, *args, **kwargs):
        if volume.path.endswith("phantom000_ct.nii.gz"):
            raise ZeroDivisionError("a bug in one volume's preprocessing")
        return real(volume, *args, **kwargs)

    monkeypatch.setattr(voxfm.data.ingest.units, "preprocess", flaky)
    report = run_shard(str(src), str(tmp_path / "out"), {}, progress=False, workers=1)
    assert report["n_inputs"] == 2 == report["n_sharded"] + report["n_rejected"] and report["n_sharded"] == 1
    (rejected,) = report["rejected"]
    assert rejected["reason"] == "unexpected error (ZeroDivisionError): a bug in one volume's preprocessing"
    assert report["rejected_by_reason"] == {"unexpected error": 1}
    # the byte budget: 40 x 40 x 32 voxels at 4 bytes = 0.195 MB
    report = run_shard(str(src), str(tmp_path / "out2"), {"max_mb": 0.15}, progress=False, workers=1)
    assert report["n_sharded"] == 0 and report["rejected_by_reason"] == {"too large": 2}
    assert "MB in memory > preprocess.max_mb=0.15" in report["rejected"][0]["reason"]


def test_shard_cli_bad_arguments_exit_2_and_an_unwritable_output_exits_4(tmp_path, phantom_dir, monkeypatch, capsys):
    import errno

    from voxfm.data.ingest.shard_set import ShardSetWriter
    from voxfm.pretrain.cli.main import main

    (tmp_path / "a_file").write_text("")
    args = [f"input={phantom_dir}", "progress=false", "workers=1"]
    assert main(["shard", *args, f"output={tmp_path / 'o'}", "workers=abc"]) == 2
    assert main(["shard", *args, f"output={tmp_path / 'a_file'}"]) == 2
    assert main(["shard", *args, f"output={tmp_path / 'o'}", "preprocess.max_mb=lots"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": error: ")[1].split("=")[0] for line in err] == ["workers", "output", "preprocess.max_mb"]

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "shard-000000.tar")

    monkeypatch.setattr(ShardSetWriter, "add", disk_full)
    assert main(["shard", *args, f"output={tmp_path / 'o'}"]) == 4
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"voxfm shard: error: could not write output={tmp_path / 'o'}: [Errno 28]")


def _flip(data, affine, axis):
    """The same voxels stored with `axis` running the other way (same world positions)."""
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1.0, data.shape[axis] - 1
    return np.ascontiguousarray(np.flip(data, axis)), affine @ flip


def _storage_orders(real_dir):
    """(name, modality, voxels, RAS affine): a CT phantom at 0.9 x 1.1 x 2.3 mm (no ratio to 1.5 mm is an
    integer, and 36 · 1.1 / 1.5 = 26.4 drops part of a voxel); the real MR (reoriented to RAS) if available."""
    data, _ = phantom((40, 36, 24), "CT", np.random.default_rng(3))
    affine = np.diag([0.9, 1.1, 2.3, 1.0])
    affine[:3, 3] = [-20.0, 10.0, 5.0]
    yield "phantom", "CT", data, affine
    if real_dir is not None:
        from voxfm.data.ingest.resample import to_ras

        img = nib.load(real_dir / "mri_t1_itk_kmeans.nii.gz")
        voxels, ras = to_ras(np.asanyarray(img.dataobj), img.affine)
        yield "real_mr", "MR", np.ascontiguousarray(voxels), ras


def test_the_same_scan_stored_ras_las_or_as_an_lps_dicom_series_shards_to_the_same_grid(tmp_path):
    """Issue 13 item 12: the grid is anchored in world space, not at the stored first voxel."""
    from tests.dicom_series import write_series
    from voxfm.data.ingest import payload

    real_dir = Path(os.environ["VOXFM_REAL_DATA"]) if os.environ.get("VOXFM_REAL_DATA") else None
    for name, modality, data, affine in _storage_orders(real_dir):
        src = tmp_path / name
        src.mkdir()
        nib.save(nib.Nifti1Image(data, affine), src / "ras.nii.gz")
        las, las_affine = _flip(data, affine, 0)
        nib.save(nib.Nifti1Image(las, las_affine), src / "las.nii.gz")
        write_series(*_flip(las, las_affine, 1), src / "lps", np.random.default_rng(0), modality=modality)
        out = tmp_path / f"{name}_out"
        report = run_shard(str(src), str(out), {}, progress=False, workers=1)
        assert report["n_sharded"] == 3, report
        samples = json.loads((out / "index.json").read_text())["samples"]
        assert sorted(s["original_orientation"] for s in samples) == ["LAS", "LPS", "RAS"]
        voxels = []
        for s in samples:
            with tarfile.open(out / s["shard"]) as tar:
                voxels.append(payload.decode(tar.extractfile(f"{s['key']}.image.b2").read()).astype(np.float64))
        span = voxels[0].max() - voxels[0].min()
        for s, v in zip(samples[1:], voxels[1:]):
            assert v.shape == voxels[0].shape, name
            assert np.abs(v - voxels[0]).max() <= 0.01 * span, (name, s["original_orientation"])
            np.testing.assert_allclose(s["affine"], samples[0]["affine"], atol=1e-3)
