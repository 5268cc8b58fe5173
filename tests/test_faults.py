"""Fault tolerance: SIGTERM/SIGUSR1 → checkpoint + exit 75 + resume; NaN steps skipped and counted; a full disk."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from data.loader import ThreadLoader
from data.stream import RegionStream
from pretrain.checkpoints import find_resume_checkpoint, load_checkpoint
from pretrain.cli import main
from pretrain.config import load_config
from pretrain.train import build_module, build_trainer
from tests.conftest import REPO

ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


def _cmd(shard_dir, run_dir, max_steps):
    return [sys.executable, "-m", "pretrain", "pretrain", "experiment=demo", f"data.shards={shard_dir}",
            f"run_dir={run_dir}", f"trainer.max_steps={max_steps}", "trainer.checkpoint_every_n_steps=5",
            "trainer.progress_bar=false", "data.num_workers=1", "trainer.log_every_n_steps=1"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_checkpoints_exits_75_and_the_rerun_continues(tmp_path, shard_dir, signum):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")  # a file: a pipe nobody reads while polling could fill and stall the run
    proc = subprocess.Popen(_cmd(shard_dir, run_dir, 100000), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=log)
    first = run_dir / "checkpoints" / "step000005.ckpt"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    proc.wait(timeout=120)
    log.close()
    err = (tmp_path / "run.log").read_text()
    assert proc.returncode == 75, err[-2000:]
    event = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "preempted" and event["signal"] == signal.Signals(signum).name
    stopped = event["step"]
    assert stopped >= 5 and f"stopped by {signal.Signals(signum).name} at step {stopped}" in err
    assert load_checkpoint(event["checkpoint"], mmap=True)["global_step"] == stopped
    assert find_resume_checkpoint(run_dir / "checkpoints")[1] == stopped

    rerun = subprocess.run(_cmd(shard_dir, run_dir, stopped + 3), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout and f"at step {stopped}" in rerun.stdout
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt", mmap=True)["global_step"] == stopped + 3


def _trainer_run(cfg, run_dir, nan_steps, shard_dir):
    module = build_module(cfg)
    original = module.objective.forward
    seen = {}

    def poisoned(batch, backbone):
        loss, logs = original(batch, backbone)
        step = module.global_step
        seen.setdefault(step, [p.detach().clone() for p in module.backbone.parameters() if p.requires_grad])
        return (loss * float("nan"), logs) if step in nan_steps else (loss, logs)

    module.objective.forward = poisoned
    trainer = build_trainer(cfg, run_dir, {})
    stream = RegionStream(str(shard_dir), module.stage.region_size_needed(), 4, shuffle_buffer=4)
    trainer.fit(module, train_dataloaders=ThreadLoader(stream, cfg.data.batch_size, 0))
    return module, seen


def _cfg(shard_dir, run_dir, max_steps, k=10):
    return load_config("pretrain", ["experiment=demo", f"data.shards={shard_dir}", f"run_dir={run_dir}",
                                    f"trainer.max_steps={max_steps}", "trainer.checkpoint_every_n_steps=2",
                                    f"trainer.max_nonfinite_steps={k}", "trainer.progress_bar=false",
                                    "trainer.images_every_n_steps=0", "trainer.log_every_n_steps=1"])


def test_a_nan_step_is_skipped_without_updating_weights_and_counted(tmp_path, shard_dir):
    module, seen = _trainer_run(_cfg(shard_dir, tmp_path, 6), tmp_path, {3}, shard_dir)
    assert module.skipped_steps == 1 and module.global_step == 6
    assert all(torch.equal(a, b) for a, b in zip(seen[3], seen[4]))  # step 3 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(seen[4], seen[5]))  # step 4 trained again
    rows = (tmp_path / "metrics" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    skipped = [r.split(",")[header.index("train/skipped_steps")] for r in rows[1:]]
    assert "1.0" in skipped
    assert {"train/mfu", "train/data_wait"} <= set(header)  # efficiency is logged with every step
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["voxfm_skipped_steps"] == 1


def test_k_consecutive_nan_steps_stop_with_the_step_and_the_last_good_checkpoint(tmp_path, shard_dir):
    with pytest.raises(FloatingPointError, match=r"3 consecutive steps, the last at step 6.*step000006\.ckpt"):
        _trainer_run(_cfg(shard_dir, tmp_path, 20, k=3), tmp_path, {4, 5, 6}, shard_dir)
    # skipped steps leave the weights alone, so the checkpoint named is finite and equals the one before them
    four, six = (load_checkpoint(tmp_path / "checkpoints" / f"step00000{s}.ckpt")["state_dict"] for s in (4, 6))
    assert all(torch.isfinite(v).all() and torch.equal(v, four[k]) for k, v in six.items() if k.startswith("backbone"))


def test_a_full_disk_keeps_the_earlier_checkpoint_and_says_so(tmp_path, shard_dir, monkeypatch, capsys):
    original = TorchCheckpointIO.save_checkpoint

    def full_disk(self, checkpoint, path, storage_options=None):
        if "step000004" in str(path):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", full_disk)
    run_dir = tmp_path / "run"
    args = ["pretrain", "experiment=demo", f"data.shards={shard_dir}", f"run_dir={run_dir}", "trainer.max_steps=6",
            "trainer.checkpoint_every_n_steps=2", "trainer.progress_bar=false", "data.num_workers=0"]
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "No space left on device" in err and "step000002.ckpt" in err
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert find_resume_checkpoint(run_dir / "checkpoints")[1] == 2
    assert load_checkpoint(run_dir / "checkpoints" / "step000002.ckpt", mmap=True)["global_step"] == 2


def test_under_slurm_sigusr1_checkpoints_and_requeues_the_job(tmp_path, shard_dir):
    """SLURM simulated: its environment (one task) and a stand-in `scontrol` that records what it is asked."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "voxfm", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(_cmd(shard_dir, run_dir, 100000), cwd=REPO, env={**ENV, **slurm},
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "step000005.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    proc.wait(timeout=120)
    log.close()
    assert proc.returncode == 75, (tmp_path / "run.log").read_text()[-2000:]
    assert calls.read_text().split() == ["requeue", "4242"]  # once, by voxfm (Lightning's auto-requeue is off)
    event = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "preempted" and event["requeue"] == "SLURM job 4242 requeued"
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))  # no second, Lightning-named checkpoint
