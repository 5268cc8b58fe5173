"""Acceptance: a messy folder as users bring it — every input sharded or rejected with its own reason."""

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_series import write_series
from voxfm.data.ingest import payload
from voxfm.data.phantoms import phantom, write_phantoms

pytestmark = pytest.mark.slow


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError):
            continue
    return total


def _messy_folder(root: Path, real: Path | None) -> dict[str, str]:
    """Writes the folder; returns bad file name → the words its rejection must contain."""
    write_phantoms(root / "nifti", n=3, seed=7, shape=(40, 40, 32))  # RAS, LPS, LAS (+ their label maps)
    rng = np.random.default_rng(0)
    data, _ = phantom((36, 30, 28), "MR", rng)  # a coronal acquisition: voxel axes run R, S, A
    nib.save(
        nib.Nifti1Image(
            data.transpose(0, 2, 1).copy(), np.array([[1.2, 0, 0, 0], [0, 0, 1.1, 0], [0, 1.3, 0, 0], [0, 0, 0, 1.0]])
        ),
        root / "nifti" / "coronal.nii.gz",
    )
    series = np.stack([phantom((32, 32, 24), "MR", rng)[0] for _ in range(2)], axis=-1)
    nib.save(nib.Nifti1Image(series, np.diag([1.8, 1.8, 1.8, 1.0])), root / "fmri.nii.gz")
    if real is not None:
        img = nib.load(real / "ct_head_invesalius.nii.gz")
        ct, affine = np.asanyarray(img.dataobj), img.affine
    else:
        ct, affine = phantom((48, 44, 30), "CT", rng)[0], np.diag([-0.9, -0.9, 2.0, 1.0])
    write_series(ct, affine, root / "dicom" / "ct_series", rng)
    nib.save(nib.Nifti1Image(ct, affine), root / "dicom_source.nii.gz")

    bad = root / "bad"
    bad.mkdir()
    good_bytes = (root / "nifti" / "phantom000_ct.nii.gz").read_bytes()
    (bad / "truncated.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 3])
    (bad / "text.nii.gz").write_text("these are not voxels\n")
    nan = np.ones((20, 20, 20), np.float32)
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), bad / "nan.nii.gz")
    header = nib.Nifti1Header()
    header.set_data_shape((10_000, 10_000, 10_000))  # 10^12 voxels, in a file of a few hundred bytes
    header.set_data_dtype(np.int16)
    with open(bad / "huge_header.nii", "wb") as f:
        header.write_to(f)
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), 7, np.int16), np.eye(4)), bad / "constant.nii.gz")
    (bad / "empty.nii.gz").write_bytes(b"")
    thick = phantom((32, 32, 6), "CT", rng)[0]
    nib.save(nib.Nifti1Image(thick, np.diag([0.8, 0.8, 50.0, 1.0])), bad / "slices_50mm.nii.gz")
    (root / "README.txt").write_text("scans exported from PACS\n")
    return {
        "truncated.nii.gz": "unreadable voxels",
        "text.nii.gz": "unreadable",
        "nan.nii.gz": "NaN",
        "huge_header.nii": "too large",
        "constant.nii.gz": "constant volume",
        "empty.nii.gz": "unreadable",
        "slices_50mm.nii.gz": "implausible spacing",
    }


def test_messy_folder_every_input_sharded_or_rejected_with_its_reason(tmp_path):
    real = Path(os.environ["VOXFM_REAL_DATA"]) if os.environ.get("VOXFM_REAL_DATA") else None
    src, out = tmp_path / "messy", tmp_path / "shards"
    expected_bad = _messy_folder(src, real)
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxfm",
            "shard",
            f"input={src}",
            f"output={out}",
            "workers=2",
            "preprocess.frames=all",
            "progress=false",
        ],
        stdout=log,
        stderr=log,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.02)
    assert proc.returncode == 0, (tmp_path / "log.txt").read_text()
    assert peak < 2 * 2**30, f"peak memory {peak / 2**30:.2f} GB"

    report = json.loads((out / "report.json").read_text())
    good = 3 + 1 + 1 + 1 + 1  # phantoms (their label maps paired, not images), coronal, 4D, series, source
    assert report["n_inputs"] == good + len(expected_bad) == report["n_sharded"] + report["n_rejected"]
    assert report["n_sharded"] == good and report["n_new_samples"] == good + 1  # the 4D file gave two frames
    reasons = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert set(reasons) == set(expected_bad)
    for name, words in expected_bad.items():
        assert words in reasons[name], (name, reasons[name])
    assert len(set(reasons.values())) == len(reasons)  # each bad file has its own reason
    assert [Path(p).name for p in report["ignored"]] == ["README.txt"]

    samples = json.loads((out / "index.json").read_text())["samples"]
    assert sorted(Path(s["label_path"]).name for s in samples if s["label_path"]) == [
        f"phantom00{i}_{m}_label.nii.gz" for i, m in enumerate(("ct", "mr", "ct"))
    ]
    series = next(s for s in samples if s["n_files"] > 1)  # no series UID without preprocess.keep_dicom_uids
    source = next(s for s in samples if Path(s["source_path"]).name == "dicom_source.nii.gz")

    def voxels(s):
        with tarfile.open(out / s["shard"]) as tar:
            return payload.decode(tar.extractfile(f"{s['key']}.image.b2").read())

    np.testing.assert_array_equal(voxels(series), voxels(source))
    assert {s["original_orientation"] for s in samples} >= {"RAS", "LPS", "LAS", "RSA"}
    assert all(s["orientation"] == "RAS" for s in samples)
    print(f"peak memory of the ingest process tree: {peak / 2**20:.0f} MB")
