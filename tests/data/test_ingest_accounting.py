"""`voxfm shard` accounts for everything it walks and never outlives itself (issue 26): links within the input read
once and links out or to nothing rejected with their reason, unreadable folders rejected, no absolute path of a link's
target recorded, its own output folder never read as input, a file replaced after hashing never sharded under the
old hash, and no worker process left behind by SIGTERM or SIGKILL."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import suppress
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import voxfm.data.ingest.run as ingest
from tests.conftest import REPO
from voxfm.data.phantoms import phantom, write_phantoms
from voxfm.pretrain.cli.main import main

SMALL = ["workers=1", "progress=false", "preprocess.min_shape=4"]
OUTSIDE = "not read: a symbolic link to a folder outside the input folder"
NOTHING = "unreadable: a symbolic link to nothing"
STUDY = ["study/phantom000_ct.nii.gz", "study/phantom001_mr.nii.gz"]  # write_phantoms(n=2) into study/


def _nifti(path: Path, seed: int, modality: str = "MR") -> Path:
    image, _ = phantom((24, 24, 16), modality, np.random.default_rng(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _bids(folder: Path, *subjects: str) -> None:
    for i, sub in enumerate(subjects):
        _nifti(folder / sub / "anat" / f"{sub}_T1w.nii.gz", seed=20 + i)
    (folder / "dataset_description.json").write_text('{"Name": "ds", "BIDSVersion": "1.8.0"}')


def _shard(src: Path, out: Path, capsys=None) -> tuple[int, dict, str]:
    code = main(["shard", f"input={src}", f"output={out}", *SMALL])
    printed = capsys.readouterr().out if capsys else ""
    return code, json.loads((out / "report.json").read_text()), printed


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` (links not followed) with its bytes and mtime: what must stay untouched."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _sources(out: Path) -> dict[str, str]:
    return {s["source_path"]: s["content_hash"] for s in json.loads((out / "index.json").read_text())["samples"]}


@pytest.mark.slow
def test_links_within_the_input_are_read_once_and_a_folder_link_out_is_rejected(tmp_path, capsys):
    src, outside = tmp_path / "in", tmp_path / "private_site"
    write_phantoms(src / "study", n=2, seed=1, shape=(24, 24, 16))
    write_phantoms(outside / "far", n=2, seed=7, shape=(24, 24, 16))
    _nifti(outside / "one.nii.gz", seed=8)
    _bids(src / "ds", "sub-01")
    _nifti(src / "store" / "sub-02" / "anat" / "sub-02_T1w.nii.gz", seed=9)
    (src / "ds" / "sub-02").symlink_to(src / "store" / "sub-02")  # a subject of a BIDS dataset kept elsewhere
    (src / "z_alias").symlink_to(src / "study")  # both inside: read once
    (src / "far").symlink_to(outside / "far")
    (src / "one.nii.gz").symlink_to(outside / "one.nii.gz")  # a file link: read as its file, under its own name
    before = _snapshot(outside)
    code, report, printed = _shard(src, tmp_path / "out", capsys)
    assert code == 0 and [(r["path"], r["reason"].split(" (")[0]) for r in report["rejected"]] == [("far", OUTSIDE)]
    assert f"  rejected far: {OUTSIDE}" in printed
    ds = [f"ds/sub-0{i}/anat/sub-0{i}_T1w.nii.gz" for i in (1, 2)]
    assert sorted(_sources(tmp_path / "out")) == [*ds, "one.nii.gz", *STUDY]
    assert {k: v["n"] for k, v in report["by_dataset"].items()} == {"ds": 2, "in": 1, "study": 2}
    assert report["n_inputs"] == report["n_sharded"] + report["n_rejected"] == 6
    assert report["ignored"] == ["ds/dataset_description.json"]
    read_once = [("store/sub-02", "ds/sub-02"), ("z_alias", "study")]  # (the later path, the one read)
    assert set(report["notes"]) == {f"{a}: leads to a folder already read ({b}), not read again" for a, b in read_once}
    text = (tmp_path / "out" / "report.json").read_text() + (tmp_path / "out" / "index.json").read_text()
    assert str(tmp_path) not in text and "private_site" not in text
    assert _snapshot(outside) == before


def _deny(folders: list[Path], monkeypatch) -> None:
    """Folders voxfm may not list: mode 000, and `os.scandir` refusing them where the mode does not stop us (root)."""
    for folder in folders:
        folder.chmod(0)
    if any(os.access(f, os.R_OK) for f in folders):
        denied, scandir = {str(f) for f in folders}, os.scandir

        def refused(path="."):
            if os.fspath(path) in denied:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", refused)


@pytest.mark.slow
def test_an_unreadable_folder_is_rejected_with_its_reason(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    write_phantoms(src / "study", n=2, seed=1, shape=(24, 24, 16))
    write_phantoms(src / "locked", n=1, seed=3, shape=(24, 24, 16))
    _bids(src / "ds", "sub-01", "sub-02")
    denied = [src / "locked", src / "ds" / "sub-02"]
    _deny(denied, monkeypatch)
    try:
        code, report, printed = _shard(src, tmp_path / "out", capsys)
    finally:
        for folder in denied:
            folder.chmod(0o755)
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert code == 0 and reasons == {p: "unreadable folder: Permission denied" for p in ("locked", "ds/sub-02")}
    assert "  rejected locked: unreadable folder: Permission denied" in printed
    assert sorted(_sources(tmp_path / "out")) == ["ds/sub-01/anat/sub-01_T1w.nii.gz", *STUDY]
    assert report["n_inputs"] == report["n_sharded"] + report["n_rejected"] == 5


@pytest.mark.slow
def test_links_to_nothing_and_loops_of_links_are_rejected_with_their_reason(tmp_path, capsys):
    src, outside = tmp_path / "in", tmp_path / "outside"
    write_phantoms(src / "study", n=2, seed=1, shape=(24, 24, 16))
    _bids(src / "ds", "sub-01")
    (src / "ds" / "sub-01" / "anat" / "sub-01_T2w.nii.gz").symlink_to(outside / "gone.nii.gz")
    (src / "gone.nii.gz").symlink_to(outside / "gone.nii.gz")
    (src / "gone_folder").symlink_to(outside / "nowhere")
    (src / "loop_a").symlink_to(src / "loop_b")
    (src / "loop_b").symlink_to(src / "loop_a")
    code, report, printed = _shard(src, tmp_path / "out", capsys)
    loop = "unreadable: a loop of symbolic links"
    gone = ["ds/sub-01/anat/sub-01_T2w.nii.gz", "gone.nii.gz", "gone_folder"]
    expected = {**dict.fromkeys(gone, NOTHING), **dict.fromkeys(["loop_a", "loop_b"], loop)}
    assert code == 0 and {r["path"]: r["reason"] for r in report["rejected"]} == expected
    assert f"  rejected gone_folder: {NOTHING}" in printed and f"  rejected loop_a: {loop}" in printed
    assert report["n_sharded"] == 3 and report["n_inputs"] == 8 and not outside.exists()


@pytest.mark.slow
def test_a_named_pipe_is_listed_as_ignored_never_opened(tmp_path):
    write_phantoms(tmp_path / "in", n=1, seed=1, shape=(24, 24, 16))
    os.mkfifo(tmp_path / "in" / "pipe.nii.gz")  # opening it would wait for a writer forever: run apart, timed
    args = ["-m", "voxfm", "shard", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", *SMALL]
    assert subprocess.run([sys.executable, *args], cwd=REPO, timeout=60).returncode == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["ignored"], report["n_sharded"], report["rejected"]) == (["pipe.nii.gz"], 1, [])


@pytest.mark.slow
def test_no_absolute_path_of_a_link_target_outside_the_input_is_recorded(tmp_path):
    src, site = tmp_path / "in", tmp_path / "private_site"
    _nifti(site / "scan.nii.gz", seed=4, modality="CT")
    for name in ("bad.nii.gz", "lost.nii.gz"):
        (site / name).write_bytes(f"{name} is not a NIfTI file".encode())
    src.mkdir()
    for name in ("bad.nii.gz", "scan.nii.gz"):
        (src / name).symlink_to(site / name)
    (src / "m.csv").write_text(f"path\nbad.nii.gz\nscan.nii.gz\n{site / 'lost.nii.gz'}\n")  # a row given outside
    before = _snapshot(site)
    runs = {src / "m.csv": ["bad.nii.gz", "lost.nii.gz"], src: ["bad.nii.gz"]}
    for i, (given, rejected) in enumerate(runs.items()):
        out = tmp_path / f"out{i}"
        code, report, _ = _shard(given, out)
        assert code == 0 and sorted(r["path"] for r in report["rejected"]) == rejected
        assert all(r["reason"].startswith("unreadable: ") for r in report["rejected"])
        assert list(_sources(out)) == ["scan.nii.gz"]
        with tarfile.open(out / "shard-000000.tar") as tar:
            samples = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".json")]
        for text in [(out / "report.json").read_text(), (out / "index.json").read_text(), *samples]:
            assert str(tmp_path) not in text and "private_site" not in text
    assert _snapshot(site) == before


@pytest.mark.slow
def test_an_output_folder_inside_the_input_is_not_read_as_input(tmp_path):
    src = tmp_path / "data"
    write_phantoms(src, n=2, seed=1, shape=(24, 24, 16))
    for run in range(2):  # the second run finds index.json, report.json and the shards there
        code, report, _ = _shard(src, src / "shards")
        assert code == 0 and report["ignored"] == [] and report["rejected"] == []
        assert report["notes"] == ["shards: the output folder, not read as input"]
        assert (report["n_inputs"], report["n_skipped"]) == (2, 2 * run)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["replaced", "written in place"])
def test_a_file_changed_after_hashing_is_rejected_and_a_rerun_shards_what_it_holds(tmp_path, monkeypatch, how):
    src, out = tmp_path / "in", tmp_path / "out"
    _nifti(src / "a.nii.gz", seed=1, modality="CT")
    _nifti(src / "b.nii.gz", seed=2, modality="CT")
    newer = _nifti(tmp_path / "newer.nii.gz", seed=3, modality="CT")
    real = ingest.process_unit

    def changed_first(unit, *settings):  # between the scan's hashing and this read
        if unit[0][0].path.endswith("a.nii.gz") and newer.exists():
            if how == "replaced":
                os.replace(newer, src / "a.nii.gz")
            else:
                (src / "a.nii.gz").write_bytes(newer.read_bytes())
                newer.unlink()
        return real(unit, *settings)

    monkeypatch.setattr(ingest, "process_unit", changed_first)
    code, report, _ = _shard(src, out)
    why = "changed while being read: replaced or written to after it was hashed; rerun to shard it"
    assert code == 0 and report["rejected"] == [{"path": "a.nii.gz", "reason": why}]
    assert list(_sources(out)) == ["b.nii.gz"]
    code, report, _ = _shard(src, out)
    assert code == 0 and (report["n_new"], report["n_skipped"], report["n_rejected"]) == (1, 1, 0)
    assert _sources(out) == {p: hashlib.sha256((src / p).read_bytes()).hexdigest() for p in ("a.nii.gz", "b.nii.gz")}


SLOW = """import sys, time, voxfm.data.ingest.run as m
real = m.process_unit
def slow(*args):
    time.sleep(1.0)
    return real(*args)
m.process_unit = slow
from voxfm.pretrain.cli.main import main
sys.exit(main(sys.argv[1:]))"""


def _processes() -> dict[int, tuple[str, int, bytes]]:
    """Every process not yet ended (a zombie has ended): pid → (state, parent pid, command line)."""
    found = {}
    for p in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
        with suppress(OSError, IndexError):
            state, ppid = (p / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if state not in "ZX":
                found[int(p.name)] = (state, int(ppid), (p / "cmdline").read_bytes())
    return found


def _still_running(pids: set[int], out: Path, seconds: float = 10.0) -> set[int]:
    """Of `pids` and every process whose command line names `out` (a forked worker's does), those still on."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        left = {p for p, (_, _, cmd) in _processes().items() if p in pids or f"output={out}".encode() in cmd}
        if not left:
            break
        time.sleep(0.05)
    return left


def _start_slow_shard(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path, set[int]]:
    """A `voxfm shard ... workers=2` whose every subject takes a second (its forked workers inherit SLOW's patch):
    (its process, input, output, its workers) once it has published a shard."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_phantoms(src, n=6, seed=1, shape=(24, 24, 16))
    args = ["shard", f"input={src}", f"output={out}", "workers=2", "shard_max_mb=0.001", *SMALL[1:]]
    # stderr to a file, not a pipe (a worker left behind would hold a pipe open); its own process group (session):
    # the test's cleanup reaches whatever it leaves behind, and nothing else
    with open(tmp_path / "stderr.txt", "w") as err:
        cmd, env = [sys.executable, "-c", SLOW, *args], {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline, workers = time.time() + 120, set()
    while time.time() < deadline and proc.poll() is None:
        workers |= {p for p, (_, ppid, _) in _processes().items() if ppid == proc.pid}
        if len(workers) >= 2 and (out / "index.json").exists() and _sources(out):
            return proc, src, out, workers
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the run ended or never got going: {(tmp_path / 'stderr.txt').read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_shard_leaves_no_worker_behind_and_a_rerun_finishes(tmp_path, signum):
    proc, src, out, workers = _start_slow_shard(tmp_path)
    try:
        proc.send_signal(signum)
        proc.wait(timeout=60)
        left = _still_running(workers, out)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group: whatever it left behind, nothing else
    assert left == set()  # SIGTERM: killed on the way out; SIGKILL: the kernel's parent-death signal
    err = (tmp_path / "stderr.txt").read_text()
    term = signum == signal.SIGTERM  # README, exit codes: 75 = stopped with its state on disk, the same command resumes
    assert proc.returncode == (75 if term else -signal.SIGKILL), err[-3000:]
    assert ("voxfm shard: stopped by SIGTERM; the shards published so far are kept" in err) == term
    index = json.loads((out / "index.json").read_text())
    done = len(index["samples"])
    assert 0 < done < 6
    keys = set()
    for shard in index["shards"]:  # what the index names was published whole
        with tarfile.open(out / shard["name"]) as tar:
            keys |= {m.name.split(".", 1)[0] for m in tar.getmembers()}  # a key holds no dot
    assert sorted(keys) == sorted(s["key"] for s in index["samples"])
    assert main(["shard", f"input={src}", f"output={out}", "workers=2", *SMALL[1:]]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["n_skipped"], report["n_new"], report["n_rejected"]) == (done, 6 - done, 0)
    hashes = [s["content_hash"] for s in json.loads((out / "index.json").read_text())["samples"]]
    assert len(hashes) == len(set(hashes)) == 6  # every volume exactly once
