"""One job per folder: a second `voxfm pretrain` on a run_dir, or `voxfm shard` into an output, exits 2 naming
the holder while the first finishes; a lock left by a SIGKILLed process is taken over; no `-v1` checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from voxfm.data.ingest.locks import LOCK_NAME, FolderLocked, folder_lock
from voxfm.pretrain.cli.main import main

ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
HOLD = """
import os, sys, time
from voxfm.data.ingest.locks import folder_lock
with folder_lock(sys.argv[1], "output"):
    ready, tell = os.pipe()
    child = os.fork()  # a forked worker outliving its parent must not keep the lock
    if child == 0:
        os.write(tell, b"x")  # its fork hook has run: its copy of the lock is closed
        time.sleep(600)
        os._exit(0)
    os.read(ready, 1)
    print(child, flush=True)
    time.sleep(600)
"""
# a real `voxfm` command that, once it holds its folder's lock, waits for $VOXFM_TEST_GO before going on
STALLED = """
import os, sys, time
import {module} as m
original = m.{function}
def stalled(*args, **kwargs):
    while not os.path.exists(os.environ["VOXFM_TEST_GO"]):
        time.sleep(0.05)
    return original(*args, **kwargs)
m.{function} = stalled
from voxfm.pretrain.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _start_stalled(module, function, args, folder, go):
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED.format(module=module, function=function), *args],
        cwd=REPO,
        env={**ENV, "VOXFM_TEST_GO": str(go)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            if json.loads((folder / LOCK_NAME).read_text())["pid"] == proc.pid:
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the first job never held the lock: {proc.communicate()}")


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True
    )
    grandchild = int(proc.stdout.readline())
    try:
        with pytest.raises(FolderLocked, match=f"pid {proc.pid}, started .*command: "):
            with folder_lock(tmp_path, "output"):
                pass
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        with folder_lock(tmp_path, "output") as lock:  # its forked child still runs
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        os.kill(grandchild, signal.SIGKILL)


def _pretrain_args(shard_dir, run_dir, max_steps):
    return [
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        f"trainer.max_steps={max_steps}",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=0",
        "data.num_workers=0",
    ]


@pytest.mark.slow
def test_a_second_pretrain_on_a_run_dir_exits_2_and_the_first_finishes(tmp_path, shard_dir, capsys):
    run, go = tmp_path / "run", tmp_path / "go"
    first = _start_stalled("voxfm.pretrain.launch.run", "build_module", _pretrain_args(shard_dir, run, 2), run, go)
    try:
        assert main(_pretrain_args(shard_dir, run, 2)) == 2
        err = capsys.readouterr().err
        assert f"run_dir={run} is in use by another voxfm job" in err and f"pid {first.pid}," in err
    finally:
        go.touch()
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert names == {"step000001.ckpt", "step000002.ckpt", "last.ckpt"}
    assert [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()] == ["start", "end"]

    copy = tmp_path / "copy"  # a copied run_dir resumes into its own last.ckpt, no last-v1.ckpt
    shutil.copytree(run, copy)
    assert main(_pretrain_args(shard_dir, copy, 3)) == 0
    names = {p.name for p in (copy / "checkpoints").iterdir()}
    assert names == {"step000001.ckpt", "step000002.ckpt", "step000003.ckpt", "last.ckpt"}


@pytest.mark.slow
def test_a_second_shard_into_an_output_exits_2_and_the_first_finishes(tmp_path, phantom_dir, capsys):
    out, go = tmp_path / "shards", tmp_path / "go"
    args = ["shard", f"input={phantom_dir}", f"output={out}", "progress=false", "workers=2"]
    first = _start_stalled("voxfm.data.ingest.run", "discover", args, out, go)
    try:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"output={out} is in use by another voxfm job" in err and f"pid {first.pid}," in err
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert "sharded 6/6 inputs" in stdout  # 6 phantoms, each with its label map
    index = json.loads((out / "index.json").read_text())
    assert len(index["samples"]) == 6 and sum(s["n_samples"] for s in index["shards"]) == 6


def test_a_released_lock_keeps_no_host_or_command_and_an_unwritable_folder_exits_4(tmp_path, shard_dir, capsys):
    with folder_lock(tmp_path / "out", "output") as path:
        held = json.loads(path.read_text())
        assert held["pid"] == os.getpid() and "command" in held
        with pytest.raises(FolderLocked, match="never delete the lock file while that process lives"):
            with folder_lock(tmp_path / "out", "output"):
                pass
    assert (tmp_path / "out" / LOCK_NAME).read_text() == ""  # a folder shared afterwards names no host or command
    args = ["pretrain", "experiment=demo", f"data.shards={shard_dir}", "run_dir=/sys/voxfm-run", "trainer.max_steps=1"]
    assert main(args) == 4  # /sys cannot take a folder, even for root
    assert "run_dir=/sys/voxfm-run: cannot create its lock" in capsys.readouterr().err
