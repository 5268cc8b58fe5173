"""SIGKILL at three moments of one run — after a checkpoint, in the middle of writing one, at a random time —
and each time the same command resumes; the run ends at exactly max_steps and its export loads into MONAI."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from monai.networks.nets import ViT as MonaiViT
from safetensors.torch import load_file

from tests.conftest import REPO
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint

pytestmark = pytest.mark.distributed


def _run(shard_dir, run_dir, env):
    args = [
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        "trainer.max_steps=30",
        "trainer.checkpoint_every_n_steps=5",
        "trainer.progress_bar=false",
        "data.num_workers=1",
        "model.num_layers=4",
    ]
    harness = REPO / "tests" / "training" / "slow_save_harness.py"
    return subprocess.Popen(
        [sys.executable, str(harness), *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_for(predicate, proc, seconds=300):
    deadline = time.time() + seconds
    while not predicate() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the kill"


def test_three_kills_then_the_run_ends_at_max_steps(tmp_path, shard_dir):
    run_dir, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    steps_seen = []

    proc = _run(shard_dir, run_dir, env)  # 1: right after a checkpoint
    _wait_for(lambda: (ckpts / "step000005.ckpt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_seen.append(find_resume_checkpoint(ckpts)[1])

    proc = _run(shard_dir, run_dir, {**env, "VOXFM_TEST_SLOW_SAVE": "step000015"})  # 2: halfway through a write
    _wait_for(lambda: (ckpts / "step000015.ckpt.tmp").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpts / "step000015.ckpt.tmp").exists() and not (ckpts / "step000015.ckpt").exists()
    steps_seen.append(find_resume_checkpoint(ckpts)[1])  # the half-written file is never a candidate

    proc = _run(shard_dir, run_dir, env)  # 3: at a random moment once the resumed run trains again
    _wait_for(lambda: (ckpts / "step000015.ckpt").exists(), proc)
    time.sleep(random.uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_seen.append(find_resume_checkpoint(ckpts)[1])

    final = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxfm",
            "pretrain",
            "experiment=demo",
            f"data.shards={shard_dir}",
            f"run_dir={run_dir}",
            "trainer.max_steps=30",
            "trainer.checkpoint_every_n_steps=5",
            "trainer.progress_bar=false",
            "data.num_workers=1",
            "model.num_layers=4",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert steps_seen[0] >= 5 and steps_seen[1] == 10 and steps_seen[2] >= 10, steps_seen
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    resumes = [e["step"] for e in events if e["event"] == "resume"]
    assert resumes == steps_seen and events[-1] == {**events[-1], "event": "end", "step": 30}
    export = subprocess.run(
        [sys.executable, "-m", "voxfm", "export", f"checkpoint={run_dir}", f"output={tmp_path / 'export'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    meta = json.loads((tmp_path / "export" / "backbone.json").read_text())
    assert meta["step"] == 30
    MonaiViT(**meta["monai_kwargs"]).load_state_dict(load_file(str(tmp_path / "export" / "backbone.safetensors")))
