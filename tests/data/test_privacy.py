"""A shard set and an export are shared: no PatientID, no DICOM UID (unless asked), no absolute path in them."""

import json
import tarfile

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.dicom_series import write_series
from voxfm.data.ingest.inputs import pseudonym
from voxfm.data.ingest.run import run_shard
from voxfm.data.phantoms import phantom
from voxfm.pretrain.export.run import run_export
from voxfm.pretrain.runtime.shareable import shareable_config

AFFINE = np.diag([-1.2, -0.9, 2.5, 1.0])


def _series(folder, seed: int, patient: str = "Doe^John") -> str:
    """A CT series of one phantom under `folder`; returns its SeriesInstanceUID."""
    data, _ = phantom((40, 36, 24), "CT", np.random.default_rng(seed))
    files = write_series(data, AFFINE, folder, np.random.default_rng(seed), patient=patient)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _strings(obj):
    """Every string in a JSON value, keys included."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def _shard_set_text(out) -> tuple[list[str], dict[str, dict]]:
    """(every string of index.json, report.json, tar member names and sample JSONs; key → sample JSON)."""
    texts, samples = [], {}
    for name in ("index.json", "report.json"):
        texts += list(_strings(json.loads((out / name).read_text())))
    for shard in json.loads((out / "index.json").read_text())["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            for member in tar.getmembers():
                texts.append(member.name)
                if member.name.endswith(".json"):
                    samples[member.name[: -len(".json")]] = json.loads(tar.extractfile(member).read())
    texts += [t for s in samples.values() for t in _strings(s)]
    return texts, samples


def test_shard_set_has_pseudonyms_relative_paths_and_no_uids(tmp_path):
    src = tmp_path / "in"
    uids = [_series(src / "ct1", 0), _series(src / "ct2", 1)]  # one patient, two series
    data, _ = phantom((40, 36, 24), "CT", np.random.default_rng(2))
    (src / "nifti").mkdir()
    nib.save(nib.Nifti1Image(data, AFFINE), src / "nifti" / "scan.nii.gz")
    out = tmp_path / "shards"
    report = run_shard(str(src), str(out), {}, progress=False, workers=1)
    assert report["n_sharded"] == 3, report

    texts, samples = _shard_set_text(out)
    for text in texts:
        assert "Doe" not in text and "John" not in text and not any(uid in text for uid in uids), text
        assert str(tmp_path) not in text and not text.startswith("/"), text
    salt = json.loads((out / "index.json").read_text())["config"]["subject_salt"]
    assert len(salt) == 32
    series = [s for s in samples.values() if s["n_files"] > 1]
    nifti = next(s for s in samples.values() if s["n_files"] == 1)
    assert [s["subject"] for s in series] == [pseudonym("Doe^John", salt)] * 2  # one subject, 16 hex digits
    assert len(series[0]["subject"]) == 16 and nifti["subject"] == pseudonym("scan", salt)
    assert all("series_uid" not in s for s in samples.values())
    assert sorted(s["source_path"] for s in samples.values()) == ["ct1", "ct2", "nifti/scan.nii.gz"]
    assert all(key.split("_")[1] == s["subject"] for key, s in samples.items())  # <dataset>_<pseudonym>_<hash>

    _series(src / "ct3", 3)  # the same patient, sharded into the same set by a later run
    again = run_shard(str(src), str(out), {}, progress=False, workers=1)
    assert again["n_new"] == 1 and again["n_skipped"] == 3
    index = json.loads((out / "index.json").read_text())
    assert index["config"]["subject_salt"] == salt
    assert [s["subject"] for s in index["samples"] if s["n_files"] > 1] == [pseudonym("Doe^John", salt)] * 3


def test_dicom_uids_only_with_the_opt_in_flag(tmp_path):
    uid = _series(tmp_path / "in" / "ct", 0)
    run_shard(str(tmp_path / "in"), str(tmp_path / "out"), {"keep_dicom_uids": True}, progress=False, workers=1)
    _, samples = _shard_set_text(tmp_path / "out")
    assert [s["series_uid"] for s in samples.values()] == [uid]
    with pytest.raises(ValueError, match="preprocess.keep_dicom_uids='yes': expected true or false"):
        run_shard(str(tmp_path / "in"), str(tmp_path / "out2"), {"keep_dicom_uids": "yes"}, progress=False)


def test_shareable_config_keeps_only_last_path_components():
    config = {
        "run_dir": "/home/alice/runs/ct_mae",
        "init_from": None,
        "seed": 0,
        "data": {
            "shards": "pipe:curl -s https://host.example/sets/ct/shard-{0..9}.tar",
            "sources": [{"name": "ct", "shards": "../sets/ct"}],
        },
        "logger": {"save_dir": "~/wandb/"},
        "trainer": {"precision": "bf16-mixed"},
    }
    assert shareable_config(config) == {
        "run_dir": "ct_mae",
        "init_from": None,
        "seed": 0,
        "data": {"shards": "shard-{0..9}.tar", "sources": [{"name": "ct", "shards": "ct"}]},
        "logger": {"save_dir": "wandb"},
        "trainer": {"precision": "bf16-mixed"},
    }


@pytest.mark.parametrize("export_format", ["monai", "full"])
def test_export_names_no_absolute_path(mim_run, shard_dir, tmp_path, export_format):
    out = run_export(str(mim_run), str(tmp_path / "export"), export_format=export_format)
    meta_text = (out / ("full.json" if export_format == "full" else "backbone.json")).read_text()
    for text in [meta_text, (out / "README.md").read_text()]:
        for folder in (mim_run, shard_dir, tmp_path):
            assert str(folder) not in text
    meta = json.loads(meta_text)
    assert not [t for t in _strings(meta) if t.startswith("/")]
    assert meta["config"]["run_dir"] == mim_run.name and meta["config"]["data"]["shards"] == shard_dir.name
    assert meta["checkpoint"].endswith(".ckpt") and "/" not in meta["checkpoint"]
