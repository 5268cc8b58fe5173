"""Folders as people have them, built from the real scans in $VOXFM_REAL_DATA (phantoms without it): modality from
evidence (never CT from a minimum), nnU-Net raw / Decathlon / BIDS layouts with their dataset names and label pairs,
label maps never images, and a dry run that writes nothing and counts what the run then shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxfm.data.ingest.plan import plan_shard
from voxfm.data.ingest.run import run_shard
from voxfm.data.ingest.tally import format_tally
from voxfm.data.phantoms import phantom
from voxfm.pretrain.cli.main import main

FAST = {"spacing": [3.0, 3.0, 3.0], "min_shape": 8}  # the real scans at 3 mm: seconds, not minutes


@pytest.fixture(scope="module")
def scans() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return load_scans()


def load_scans() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name → (voxels, affine): a CT head and two T1 MRs with their label maps (real where available)."""
    real = os.environ.get("VOXFM_REAL_DATA")
    if real:
        out = {}
        for name, file in [
            ("ct", "ct_head_invesalius"),
            ("t1", "mri_t1_colin27_ch2"),
            ("t1b", "mri_t1_itk_kmeans"),
        ]:
            labels = {"t1": "mri_t1_colin27_ch2_aal_label"}.get(name, f"{file}_label")
            for key, f in ((name, file), (f"{name}_label", labels)):
                img = nib.load(Path(real) / f"{f}.nii.gz")
                out[key] = (np.asanyarray(img.dataobj), img.affine)
        return out
    rng = np.random.default_rng(3)
    out = {}
    for name, modality in (("ct", "CT"), ("t1", "MR"), ("t1b", "MR")):
        image, label = phantom((40, 36, 32), modality, rng)
        out[name], out[f"{name}_label"] = (image, np.diag([2.0, 2.0, 2.0, 1.0])), (label, np.diag([2.0, 2.0, 2.0, 1.0]))
    return out


def _save(scans, name: str, path: Path, transform=None) -> None:
    data, affine = scans[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(transform(data) if transform else data, affine), path)


def test_modality_comes_from_evidence_and_a_shifted_t1_is_never_ct(tmp_path, scans, capsys):
    src = tmp_path / "scans"
    _save(scans, "ct", src / "head.nii.gz")  # a CT: air at -1000 HU and a soft-tissue mode
    _save(scans, "t1", src / "brain.nii.gz")  # an MR with no air at -1000: non-negative magnitudes
    shifted = lambda d: d.astype(np.float32) - float(d.min()) - 610.0  # noqa: E731  (minimum -610)
    _save(scans, "t1b", src / "sub-01_T1w.nii.gz", shifted)
    _save(scans, "t1_label", src / "atlas.nii.gz")  # a label map named as an image
    out = tmp_path / "shards"
    assert (
        main(["shard", f"input={src}", f"output={out}", "progress=false", "workers=1", "preprocess.spacing=[3,3,3]"])
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons["sub-01_T1w.nii.gz"].startswith("modality unknown: give it in a manifest (column modality)")
    assert reasons["atlas.nii.gz"].startswith("label map, not an image")
    samples = {s["source_path"]: s for s in json.loads((out / "index.json").read_text())["samples"]}
    assert {k: (s["modality"], s["modality_source"]) for k, s in samples.items()} == {
        "head.nii.gz": ("CT", "intensities"),
        "brain.nii.gz": ("MR", "intensities"),
    }
    assert report["modality_sources"] == {"intensities": 2}
    assert "warning: the modality of 2 input(s) was decided from intensities alone" in printed

    kept = run_shard(str(src), str(tmp_path / "kept"), FAST, progress=False, workers=1, unknown_modality="keep")
    assert kept["by_dataset"]["scans"]["modalities"]["unknown (intensities)"] == 1  # the shifted T1: never CT
    assert "CT (intensities)" in kept["by_dataset"]["scans"]["modalities"]


def _corpus(root: Path, scans) -> None:
    """$nnUNet_raw with two datasets (one two-channel), a Decathlon task with 4D two-channel images, a BIDS
    dataset with derivatives, as their own tools write them."""
    raw = root / "nnUNet_raw"
    head = raw / "Dataset001_Head"
    (head / "dataset.json").parent.mkdir(parents=True)
    (head / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "head": 1}})
    )
    _save(scans, "ct", head / "imagesTr" / "head_001_0000.nii.gz")
    _save(scans, "ct_label", head / "labelsTr" / "head_001.nii.gz")
    _save(scans, "ct", head / "imagesTs" / "head_002_0000.nii.gz", lambda d: np.flip(d, 0).copy())
    brain = raw / "Dataset002_Brain"
    brain.mkdir()
    (brain / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz"}))
    _save(scans, "t1b", brain / "imagesTr" / "brain_001_0000.nii.gz")
    _save(scans, "t1b", brain / "imagesTr" / "brain_001_0001.nii.gz", lambda d: (d.max() - d).astype(d.dtype))
    _save(scans, "t1b_label", brain / "labelsTr" / "brain_001.nii.gz")
    _save(scans, "t1b_label", brain / "labelsTr" / "brain_009.nii.gz")  # no such case: an orphan label map

    task = root / "Task04_Brain"
    (task / "imagesTr").mkdir(parents=True)
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w"}, "training": []}))
    data, affine = scans["t1"]
    two = np.stack([data, (data.max() - data).astype(data.dtype)], axis=-1)
    nib.save(nib.Nifti1Image(two, affine), task / "imagesTr" / "brain_7.nii.gz")
    _save(scans, "t1_label", task / "labelsTr" / "brain_7.nii.gz")

    bids = root / "openneuro_ds"
    (bids / "dataset_description.json").parent.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    _save(scans, "t1", bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", lambda d: np.flip(d, 1).copy())
    _save(scans, "t1b", bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz", lambda d: d[::-1].copy())
    seg = bids / "derivatives" / "atlas" / "sub-01" / "anat"
    _save(scans, "t1_label", seg / "sub-01_desc-aal_dseg.nii.gz", lambda d: np.flip(d, 1).copy())
    _save(scans, "t1", seg / "sub-01_space-MNI152_desc-preproc_T1w.nii.gz")  # a processed copy: not sharded


EXPECTED = {
    "Dataset001_Head": ("nnunet", 2, {"CT (dataset.json)": 2}, 1),
    "Dataset002_Brain": ("nnunet", 2, {"MR (dataset.json)": 2}, 2),
    "Task04_Brain": ("msd", 2, {"MR (dataset.json)": 2}, 2),
    "openneuro_ds": ("bids", 2, {"MR (bids)": 2}, 1),
}


def test_nnunet_msd_and_bids_folders_shard_by_their_layouts_and_a_dry_run_counts_the_same(tmp_path, scans, capsys):
    _corpus(tmp_path / "corpus", scans)
    out = tmp_path / "shards"
    args = ["shard", f"input={tmp_path / 'corpus'}", f"output={out}", "progress=false", "workers=1"]
    args += ["preprocess.spacing=[3,3,3]", "preprocess.min_shape=8"]
    assert main([*args, "dry_run=true"]) == 0
    dry = capsys.readouterr().out
    assert not out.exists()  # a dry run writes nothing: no folder, no lock, no index
    assert main(args) == 0
    ran = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    got = {k: (v["layout"], v["n"], v["modalities"], v["with_label"]) for k, v in report["by_dataset"].items()}
    assert got == EXPECTED
    assert report["modality_sources"] == {"bids": 2, "dataset.json": 6}
    assert [r["path"] for r in report["rejected"]] == ["nnUNet_raw/Dataset002_Brain/labelsTr/brain_009.nii.gz"]
    assert report["rejected"][0]["reason"].startswith("label map, not an image")
    assert "openneuro_ds/derivatives/atlas/sub-01/anat/sub-01_space-MNI152_desc-preproc_T1w.nii.gz" in report["ignored"]

    samples = json.loads((out / "index.json").read_text())["samples"]
    assert not [s for s in samples if "labels" in s["source_path"] or "derivatives" in s["source_path"]]
    pairs = {s["source_path"]: s["label_path"] for s in samples}
    assert pairs["openneuro_ds/sub-01/anat/sub-01_T1w.nii.gz"].endswith("sub-01_desc-aal_dseg.nii.gz")
    assert pairs["nnUNet_raw/Dataset002_Brain/imagesTr/brain_001_0001.nii.gz"].endswith("labelsTr/brain_001.nii.gz")
    assert pairs["nnUNet_raw/Dataset001_Head/imagesTs/head_002_0000.nii.gz"] is None
    msd = sorted((s["frame"], s["label_path"]) for s in samples if s["dataset"] == "Task04_Brain")
    assert msd == [(0, "Task04_Brain/labelsTr/brain_7.nii.gz"), (1, "Task04_Brain/labelsTr/brain_7.nii.gz")]
    # one subject per case / participant, whatever its channels and sessions
    assert len({s["subject"] for s in samples if s["dataset"] == "Dataset002_Brain"}) == 1

    for line in format_tally(report):  # the dry run printed the counts the run then produced
        assert line in dry and line in ran
    assert "rejected 1:" in dry and "brain_009.nii.gz: label map, not an image" in dry


def test_channels_first_keeps_one_sample_per_case_and_lists_the_others(tmp_path, scans):
    _corpus(tmp_path / "corpus", scans)
    plan = plan_shard(str(tmp_path / "corpus"), FAST, channels="first")
    assert {k: v["n"] for k, v in plan["by_dataset"].items()} == {
        "Dataset001_Head": 2,
        "Dataset002_Brain": 1,
        "Task04_Brain": 1,
        "openneuro_ds": 2,
    }
    assert "nnUNet_raw/Dataset002_Brain/imagesTr/brain_001_0001.nii.gz" in plan["ignored"]


def test_a_plain_folder_pairs_named_label_maps_and_rejects_orphans(tmp_path, scans):
    src = tmp_path / "study"
    _save(scans, "ct", src / "images" / "case1.nii.gz")
    _save(scans, "ct_label", src / "labels" / "case1.nii.gz")
    _save(scans, "t1b", src / "case2.nii.gz")
    _save(scans, "t1b_label", src / "case2_seg.nii.gz")
    _save(scans, "t1b_label", src / "case3_mask.nii.gz")
    plan = plan_shard(str(src), FAST)
    assert plan["by_dataset"] == {
        "study": {"layout": "plain", "n": 2, "modalities": {"? (intensities)": 2}, "with_label": 2}
    }
    assert plan["rejected"] == [{"path": "case3_mask.nii.gz", "reason": plan["rejected"][0]["reason"]}]
    assert plan["rejected"][0]["reason"].startswith("label map, not an image")
    report = run_shard(str(src), str(tmp_path / "out"), FAST, progress=False, workers=1)
    assert report["n_inputs"] == report["n_sharded"] + report["n_rejected"] == 3
    assert report["by_dataset"]["study"]["with_label"] == 2


def test_dicom_modality_tag_is_evidence_and_a_segmentation_object_is_no_image(tmp_path):
    from tests.dicom_series import write_series

    rng = np.random.default_rng(0)
    ct = phantom((40, 36, 24), "CT", rng)[0]
    write_series(ct, np.diag([-1.5, -1.5, 2.0, 1.0]), tmp_path / "pacs" / "ct", rng, modality="MR")  # the tag wins
    seg = write_series(ct > 0, np.diag([-1.5, -1.5, 2.0, 1.0]), tmp_path / "pacs" / "seg", rng, modality="SEG")
    report = run_shard(str(tmp_path / "pacs"), str(tmp_path / "out"), FAST, progress=False, workers=1)
    assert report["by_dataset"] == {
        "pacs": {"layout": "plain", "n": 1, "modalities": {"MR (dicom)": 1}, "with_label": 0}
    }
    assert report["n_rejected"] == len(seg) == report["rejected_by_reason"]["label map, not an image"]
    assert report["n_inputs"] == report["n_sharded"] + report["n_rejected"]
