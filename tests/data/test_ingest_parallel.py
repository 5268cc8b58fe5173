"""Parallel ingest: exactly once after SIGKILL, duplicates sharded once, a subject's volumes in one shard."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import nibabel as nib
import numpy as np

from voxfm.data.ingest.run import run_shard
from voxfm.data.phantoms import write_phantoms


def _tar_keys(out):
    keys = []
    for shard in json.loads((out / "index.json").read_text())["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            keys += [m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def test_killed_midway_and_rerun_every_volume_is_sharded_exactly_once(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_phantoms(src, n=24, seed=5, shape=(56, 56, 48))
    images = [p for p in src.glob("*.nii.gz") if "_label" not in p.name]
    for p in src.glob("*_label.nii.gz"):
        p.unlink()
    cmd = [
        sys.executable,
        "-m",
        "voxfm",
        "shard",
        f"input={src}",
        f"output={out}",
        "workers=2",
        "shard_max_mb=0.05",
        "progress=false",
    ]
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once some, not all, shards are published
        index = out / "index.json"
        if index.exists() and 0 < len(json.loads(index.read_text())["samples"]) < len(images):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: make it longer"
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers
    proc.wait()
    done_before = len(json.loads((out / "index.json").read_text())["samples"])
    assert 0 < done_before < len(images)

    report = run_shard(str(src), str(out), {}, shard_max_mb=0.05, progress=False, workers=2)
    assert report["n_skipped"] == done_before and report["n_new"] == len(images) - done_before
    assert report["n_inputs"] == len(images) == report["n_sharded"] + report["n_rejected"]
    samples = json.loads((out / "index.json").read_text())["samples"]
    hashes = [s["content_hash"] for s in samples]
    assert len(hashes) == len(set(hashes)) == len(images)  # each volume exactly once in the index
    keys = _tar_keys(out)
    assert sorted(keys) == sorted(s["key"] for s in samples)  # ... and in the shards
    assert not list(out.glob("*.tmp"))  # the shard in progress at the kill was redone under its own name


def test_duplicates_are_sharded_once_and_reported(tmp_path, phantom_dir):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(phantom_dir / "phantom000_ct.nii.gz", src / "a.nii.gz")
    shutil.copy(phantom_dir / "phantom000_ct.nii.gz", src / "a_copy.nii.gz")
    shutil.copy(phantom_dir / "phantom001_mr.nii.gz", src / "b.nii.gz")
    report = run_shard(str(src), str(tmp_path / "out"), {}, progress=False, workers=2)
    assert report["n_inputs"] == 3 == report["n_sharded"] + report["n_rejected"] and report["n_sharded"] == 2
    (dup,) = report["rejected"]
    # paths relative to the input root: a shared report names no absolute folder
    assert dup["path"] == "a_copy.nii.gz" and dup["reason"] == "duplicate: same content as a.nii.gz"
    assert report["rejected_by_reason"] == {"duplicate": 1}
    again = run_shard(str(src), str(tmp_path / "out"), {}, progress=False, workers=1)  # nothing new on a rerun
    assert again["n_skipped"] == 2 and again["n_new"] == 0 and again["n_rejected"] == 1


def test_a_subjects_volumes_share_a_shard(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,subject"]
    for subject in range(5):
        for visit in range(3):
            data = rng.normal(100, 30, (24, 24, 24)).astype(np.float32)
            data[6:18, 6:18, 6:18] += 400
            path = tmp_path / f"s{subject}_v{visit}.nii.gz"
            nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0])), path)
            rows.append(f"{path},subject{subject}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    report = run_shard(str(tmp_path / "m.csv"), str(out), {}, shard_max_mb=0.01, progress=False, workers=2)
    assert report["n_sharded"] == 15 and report["n_shards"] > 1
    shards_of: dict[str, set] = {}
    for s in json.loads((out / "index.json").read_text())["samples"]:
        shards_of.setdefault(s["subject"], set()).add(s["shard"])
    assert len(shards_of) == 5 and all(len(v) == 1 for v in shards_of.values())


def test_a_worker_killed_mid_run_stops_the_run_with_a_reason_and_a_rerun_finishes(tmp_path, phantom_dir, monkeypatch):
    import pytest

    import voxfm.data.ingest.run as ingest

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for p in sorted(phantom_dir.glob("*.nii.gz")):
        shutil.copy(p, src / p.name)
    real = ingest.process_unit

    def dies_on_the_fourth(unit, *settings):  # inherited by the forked workers
        if "phantom002" in unit[0][0].path:
            os._exit(137)  # as the kernel's OOM killer would leave it
        return real(unit, *settings)

    monkeypatch.setattr(ingest, "process_unit", dies_on_the_fourth)
    with pytest.raises(ingest.WorkerDied, match="a worker process died .*phantom002"):
        run_shard(str(src), str(out), {}, shard_max_mb=0.01, progress=False, workers=2)
    monkeypatch.setattr(ingest, "process_unit", real)
    report = run_shard(str(src), str(out), {}, shard_max_mb=0.01, progress=False, workers=2)
    assert report["n_sharded"] == 6 and report["n_rejected"] == 0  # 6 phantoms, each with its label map
    hashes = [s["content_hash"] for s in json.loads((out / "index.json").read_text())["samples"]]
    assert len(hashes) == len(set(hashes)) == 6
