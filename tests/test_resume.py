"""End to end: shard → pretrain → SIGKILL after the step-20 checkpoint → same command → ends at step 40."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import REPO


def _pretrain_cmd(shards, run_dir):
    return [sys.executable, "-m", "pretrain", "pretrain", "experiment=demo", f"data.shards={shards}",
            f"run_dir={run_dir}", "trainer.max_steps=40", "trainer.checkpoint_every_n_steps=10",
            "trainer.progress_bar=false", "data.num_workers=0",
            # a little more work per step so the kill lands mid-run on a fast machine too
            "model.num_layers=4", "data.batch_size=8"]


def _step(ckpt) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def test_killed_run_resumes_from_its_last_checkpoint_and_ends_at_max_steps(tmp_path, phantom_dir):
    run_dir, shard_dir = tmp_path / "run", tmp_path / "shards"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    shard = subprocess.run([sys.executable, "-m", "pretrain", "shard", f"input={phantom_dir}", f"output={shard_dir}",
                            "progress=false"], cwd=REPO, env=env, capture_output=True, text=True)
    assert shard.returncode == 0, shard.stderr[-3000:]
    assert "sharded 12/12 volumes" in shard.stdout
    proc = subprocess.Popen(_pretrain_cmd(shard_dir, run_dir), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step20 = run_dir / "checkpoints" / "step000020.ckpt"
    deadline = time.time() + 300
    while not step20.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    # last.ckpt may lag one save behind stepN.ckpt when the kill lands between the two writes
    newest = max((run_dir / "checkpoints").glob("*.ckpt"), key=_step)
    killed_at = _step(newest)
    assert 20 <= killed_at < 40

    second = subprocess.run(_pretrain_cmd(shard_dir, run_dir), cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"at step {killed_at}" in second.stdout and "voxfm: resuming from" in second.stdout
    assert _step(run_dir / "checkpoints" / "last.ckpt") == 40
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "resume", "end"]
    assert events[1]["step"] == killed_at and events[2]["step"] == 40
    # the resumed run logged only steps after the checkpoint: it did not start again from 0
    rows = (run_dir / "metrics" / "version_1" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert steps and min(steps) >= killed_at and max(steps) == 39
    assert {f"step{s:06d}.ckpt" for s in (10, 20, 30, 40)} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
