"""Folders as people lay them out by hand: per-patient folders, case ids that end in digits, symbolic links, a BIDS
look-alike, two datasets of one name, empty label maps, labels added late, odd file names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxfm.data.ingest.layouts import discover
from voxfm.data.ingest.plan import plan_shard
from voxfm.data.ingest.run import run_shard
from voxfm.data.phantoms import phantom
from voxfm.pretrain.cli.main import main

SMALL = {"spacing": [3.0, 3.0, 3.0], "min_shape": 4}
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _write(path: Path, modality: str = "CT", seed: int = 0, label: bool = False, affine=AFFINE) -> None:
    image, labels = phantom((24, 24, 16), modality, np.random.default_rng(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels if label else image, affine), path)


def _shard(src: Path, out: Path, **kwargs) -> dict:
    return run_shard(str(src), str(out), SMALL, progress=False, workers=1, **kwargs)


def test_per_patient_folders_are_subjects_and_shards_end_between_them(tmp_path):
    for i in range(6):
        _write(tmp_path / "study" / f"pat{i:03d}" / "image.nii.gz", seed=i)
    report = run_shard(str(tmp_path / "study"), str(tmp_path / "out"), SMALL, 0.001, progress=False, workers=1)
    samples = json.loads((tmp_path / "out" / "index.json").read_text())["samples"]
    assert len({s["subject"] for s in samples}) == 6 and report["n_shards"] == 6
    assert {s["dataset"] for s in samples} == {"study"}


def test_case_ids_ending_in_four_digits_are_cases_not_channels(tmp_path):
    task = tmp_path / "amos22"
    (task / "imagesTr").mkdir(parents=True)
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    for i in (1, 2, 3):
        _write(task / "imagesTr" / f"amos_{i:04d}.nii.gz", seed=i)
        _write(task / "labelsTr" / f"amos_{i:04d}.nii.gz", seed=i, label=True)
    plan = plan_shard(str(task), SMALL, channels="first")
    assert plan["by_dataset"]["amos22"] == {
        "layout": "msd",
        "n": 3,
        "modalities": {"CT (dataset.json)": 3},
        "with_label": 3,
    }
    assert plan["rejected"] == [] and plan["ignored"] == []
    assert len({v.subject for v in discover(str(task)).nifti}) == 3


def test_a_forced_layout_that_matches_nothing_exits_2(tmp_path, capsys):
    _write(tmp_path / "plain" / "a.nii.gz")
    assert main(["shard", f"input={tmp_path / 'plain'}", f"output={tmp_path / 'o'}", "layout=nnunet"]) == 2
    assert "layout=nnunet: input=" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert main(["shard", f"input={tmp_path / 'empty'}", f"output={tmp_path / 'o'}"]) == 2
    assert "no NIfTI file (.nii, .nii.gz) or DICOM file found (1 other file(s))" in capsys.readouterr().err


def test_symbolic_links_keep_labels_and_every_file_is_accounted_for(tmp_path):
    src = tmp_path / "links"
    _write(src / "a.nii.gz")
    _write(src / "a_seg.nii.gz", label=True)
    (src / "b.nii.gz").symlink_to(src / "a.nii.gz")
    (src / "gone.nii.gz").symlink_to(src / "nowhere.nii.gz")
    (src / "loop").symlink_to(src)
    report = _shard(src, tmp_path / "out")
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons == {"b.nii.gz": "duplicate: same content as a.nii.gz", "gone.nii.gz": reasons["gone.nii.gz"]}
    assert reasons["gone.nii.gz"].startswith("unreadable: a symbolic link to nothing")
    (sample,) = json.loads((tmp_path / "out" / "index.json").read_text())["samples"]
    assert (sample["source_path"], sample["label_path"]) == ("a.nii.gz", "a_seg.nii.gz")
    assert report["n_inputs"] == report["n_sharded"] + report["n_rejected"] == 3


def test_sub_folders_without_bids_datatypes_are_no_bids_and_two_rawdata_stay_two(tmp_path):
    _write(tmp_path / "c" / "hosp" / "sub-001" / "images" / "ct.nii.gz")
    _write(tmp_path / "c" / "hosp" / "sub-001" / "labels" / "ct.nii.gz", label=True)
    for study in ("study1", "study2"):
        bids = tmp_path / "c" / study / "rawdata"
        (bids / "sub-01" / "anat").mkdir(parents=True)
        (bids / "dataset_description.json").write_text("{}")
        _write(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", "MR", seed=len(study) + int(study[-1]))
    plan = plan_shard(str(tmp_path / "c"), SMALL)
    assert {k: (v["layout"], v["n"], v["with_label"]) for k, v in plan["by_dataset"].items()} == {
        "hosp": ("plain", 1, 1),
        "rawdata": ("bids", 1, 0),
        "study2/rawdata": ("bids", 1, 0),
    }


def test_an_all_background_label_keeps_its_image_and_a_label_added_later_is_named(tmp_path):
    ds = tmp_path / "Dataset003_Lesion"
    (ds / "dataset.json").parent.mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    _write(ds / "imagesTr" / "c1_0000.nii.gz")
    (ds / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 16), np.uint8), AFFINE), ds / "labelsTr" / "c1.nii.gz")
    _write(ds / "imagesTs" / "c2_0000.nii.gz", seed=2)
    first = _shard(ds, tmp_path / "out")
    assert first["n_sharded"] == 2 and first["by_dataset"]["Dataset003_Lesion"]["with_label"] == 1
    _write(ds / "labelsTs" / "c2.nii.gz", seed=2, label=True)
    again = _shard(ds, tmp_path / "out")
    assert again["n_skipped"] == 2 and again["n_inputs"] == again["n_sharded"] + again["n_rejected"] == 3
    assert again["rejected"][0]["path"] == "labelsTs/c2.nii.gz"
    assert "was sharded without a label by an earlier run" in again["rejected"][0]["reason"]
    parent = _shard(tmp_path, tmp_path / "out")  # the same files reached from the folder above: done, no duplicates
    assert parent["n_skipped"] == 2 and not [r for r in parent["rejected"] if "duplicate" in r["reason"]]


def test_mirrored_label_folders_and_bare_mask_names_pair(tmp_path):
    src = tmp_path / "study"
    _write(src / "images" / "p1" / "scan.nii.gz")
    _write(src / "labels" / "p1" / "scan.nii.gz", label=True)
    _write(src / "p2" / "ct.nii.gz", seed=2)
    _write(src / "p2" / "mask.nii.gz", seed=2, label=True)
    plan = plan_shard(str(src), SMALL)
    assert plan["by_dataset"]["study"]["with_label"] == 2 and plan["rejected"] == []


def test_a_label_on_another_grid_is_seen_by_the_dry_run_and_named_as_such(tmp_path):
    _write(tmp_path / "s" / "x.nii.gz")
    _write(tmp_path / "s" / "x_seg.nii.gz", label=True, affine=np.diag([2.0, 2.0, 2.5, 1.0]))
    (rejected,) = plan_shard(str(tmp_path / "s"), SMALL)["rejected"]
    assert rejected["reason"].startswith("label grid has the image's shape (24, 24, 16) but another affine")
    (ran,) = _shard(tmp_path / "s", tmp_path / "out")["rejected"]
    assert ran["reason"] == rejected["reason"]


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="a file name that is not UTF-8: Linux allows it")
def test_a_file_name_that_is_not_utf8_is_sharded(tmp_path):
    src = tmp_path / "odd"
    src.mkdir()
    _write(Path(os.fsdecode(bytes(src) + b"/bad\xff name.nii.gz")))
    report = _shard(src, tmp_path / "out")
    assert report["n_sharded"] == 1


def test_a_damaged_dataset_json_is_named_and_its_modalities_come_from_intensities(tmp_path, capsys):
    ds = tmp_path / "Dataset004_Broken"
    _write(ds / "imagesTr" / "c1_0000.nii.gz")
    (ds / "dataset.json").write_text("{not json")
    assert main(["shard", f"input={ds}", f"output={tmp_path / 'o'}", "progress=false", "workers=1"]) == 0
    out = capsys.readouterr().out
    assert "note: Dataset004_Broken/dataset.json cannot be used (JSONDecodeError" in out
    assert "Dataset004_Broken (nnunet): 1 input(s): CT (intensities) 1" in out
