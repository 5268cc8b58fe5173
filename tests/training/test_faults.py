"""Fault tolerance: SIGTERM/SIGUSR1 → checkpoint + exit 75 + resume (Ctrl-C: the same, exit 130); NaN steps
skipped and counted; a full disk."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

import voxfm.pretrain.launch.run
from tests.conftest import REPO
from voxfm.pretrain.callbacks.preemption import Preemption
from voxfm.pretrain.cli.main import main
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint, load_checkpoint
from voxfm.pretrain.training.module import skips_on_device

ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


pytestmark = pytest.mark.slow


def _cmd(shard_dir, run_dir, max_steps):
    return [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        f"trainer.max_steps={max_steps}",
        "trainer.checkpoint_every_n_steps=5",
        "trainer.progress_bar=false",
        "data.num_workers=1",
        "trainer.log_every_n_steps=1",
    ]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 75), (signal.SIGUSR1, 75), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_exits_75_and_the_rerun_continues(tmp_path, shard_dir, signum, code):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")  # a file: a pipe nobody reads while polling could fill and stall the run
    proc = subprocess.Popen(_cmd(shard_dir, run_dir, 100000), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=log)
    first = run_dir / "checkpoints" / "step000005.ckpt"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    proc.wait(timeout=120)
    log.close()
    err = (tmp_path / "run.log").read_text()
    assert proc.returncode == code, err[-2000:]
    event = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "preempted" and event["signal"] == signal.Signals(signum).name
    stopped = event["step"]
    assert stopped >= 5 and f"stopped by {signal.Signals(signum).name} at step {stopped}" in err
    assert event["checkpoint"] == f"checkpoints/step{stopped:06d}.ckpt"  # relative to run_dir: shareable
    assert load_checkpoint(run_dir / event["checkpoint"], mmap=True)["global_step"] == stopped
    assert find_resume_checkpoint(run_dir / "checkpoints")[1] == stopped

    rerun = subprocess.run(_cmd(shard_dir, run_dir, stopped + 3), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout and f"at step {stopped}" in rerun.stdout
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt", mmap=True)["global_step"] == stopped + 3


def test_a_signal_before_the_first_step_stops_a_run_whose_data_never_comes(tmp_path, shard_dir):
    """The first batch is fetched before any step: a shard that takes minutes to arrive (here a `pipe:` that sleeps)
    must not make SIGTERM wait for it."""
    slow = f"data.shards='pipe:sleep 300; cat {shard_dir / 'shard-000000.tar'}'"
    cmd = [a if not a.startswith("data.shards=") else slow for a in _cmd(shard_dir, tmp_path / "run", 4)]
    out = tmp_path / "run.out"
    with open(out, "w") as stdout:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=stdout, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while "global batch" not in out.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # the data wait starts right after this line
        time.sleep(1)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 75 and time.time() - sent < 60, out.read_text()[-2000:]
    assert "stopped by SIGTERM at step 0; checkpoint none new: stopped before its first step" in out.read_text()


def _poisoned_run(monkeypatch, run_dir, shard_dir, nan_steps, max_steps, k=10, extra=()):
    """`voxfm pretrain` (exit code) with a NaN loss at `nan_steps`; logging every 4 steps, so a NaN step that is no
    logging step is decided on the device alone. Returns (exit code, module, weights at the start of each step)."""
    build_module, built, seen = voxfm.pretrain.launch.run.build_module, [], {}

    def poisoned_module(cfg):
        module = build_module(cfg)
        original = module.objective.forward

        def poisoned(batch, backbone):
            loss, logs = original(batch, backbone)
            step = module.global_step
            seen.setdefault(step, [p.detach().clone() for p in module.backbone.parameters() if p.requires_grad])
            return (loss * float("nan"), logs) if step in nan_steps else (loss, logs)

        module.objective.forward = poisoned
        built.append(module)
        return module

    monkeypatch.setattr(voxfm.pretrain.launch.run, "build_module", poisoned_module)
    code = main(
        [
            "pretrain",
            "experiment=demo",
            f"data.shards={shard_dir}",
            f"run_dir={run_dir}",
            f"trainer.max_steps={max_steps}",
            "trainer.checkpoint_every_n_steps=2",
            f"trainer.max_nonfinite_steps={k}",
            "trainer.progress_bar=false",
            "trainer.images_every_n_steps=0",
            "trainer.log_every_n_steps=4",
            "data.num_workers=0",
            *extra,
        ]
    )
    return code, built[0], seen


@pytest.mark.parametrize("fused", [True, False])
def test_a_nan_step_is_skipped_without_updating_weights_and_counted(tmp_path, shard_dir, monkeypatch, fused):
    """fused AdamW (the default) skips through found_inf, on the device; unfused, the module reads the flag."""
    code, module, seen = _poisoned_run(monkeypatch, tmp_path, shard_dir, {2}, 6, extra=[f"optim.fused={fused}"])
    assert code == 0 and module.skipped_steps == 1 and module.global_step == 6
    optimizer = module.trainer.optimizers[0]
    assert skips_on_device(optimizer) == fused
    assert all(torch.equal(a, b) for a, b in zip(seen[2], seen[3]))  # step 2 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(seen[3], seen[4]))  # step 3 trained again
    assert {int(s["step"]) for s in optimizer.state.values()} == {5}  # AdamW's bias correction: step 2 uncounted
    rows = (tmp_path / "metrics" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    skipped = [r.split(",")[header.index("train/skipped_steps")] for r in rows[1:]]
    assert "1.0" in skipped  # read and logged at the next logging step (step 3)
    assert {"train/tflops", "train/data_wait"} <= set(header) and "train/mfu" not in header  # no MFU on a CPU
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["voxfm_skipped_steps"] == 1


def test_k_consecutive_nan_steps_exit_3_with_the_step_and_the_last_good_checkpoint(
    tmp_path, shard_dir, monkeypatch, capsys
):
    # steps 4-6 lie between the logging steps 3 and 7: the device counters carry the run to the check at step 7
    code, _, _ = _poisoned_run(monkeypatch, tmp_path, shard_dir, {4, 5, 6}, 20, k=3)
    assert code == 3
    assert re.search(r"3 consecutive steps, the last at step 6.*step000006\.ckpt", capsys.readouterr().err)
    # skipped steps leave the weights alone, so the checkpoint named is finite and equals the one before them
    four, six = (load_checkpoint(tmp_path / "checkpoints" / f"step00000{s}.ckpt")["state_dict"] for s in (4, 6))
    assert all(torch.isfinite(v).all() and torch.equal(v, four[k]) for k, v in six.items() if k.startswith("backbone"))
    assert not (tmp_path / "checkpoints" / "step000008.ckpt").exists()  # stopped at step 7


def test_a_full_disk_keeps_the_earlier_checkpoint_and_says_so(tmp_path, shard_dir, monkeypatch, capsys):
    import voxfm.pretrain.training.checkpoint_io as checkpoint_io

    made, new_temp, save = [], checkpoint_io.new_temp, torch.save

    def recording(path):  # the checkpoint being written: torch.save is handed its open temp file
        made.append(Path(path))
        return new_temp(path)

    def full_disk(obj, f, *args, **kwargs):
        if made and "step000004" in made[-1].name:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io, "new_temp", recording)
    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    run_dir = tmp_path / "run"
    args = [
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        "trainer.max_steps=6",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.progress_bar=false",
        "data.num_workers=0",
    ]
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
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "voxfm",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    run_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(
        _cmd(shard_dir, run_dir, 100000), cwd=REPO, env={**ENV, **slurm}, stdout=subprocess.DEVNULL, stderr=log
    )
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


def test_several_ranks_agree_on_a_preemption_at_logging_steps_only(tmp_path):
    """The all-ranks decision is a collective and a read: made at logging steps only (every 4th step here)."""
    decisions, saved = [], []
    loop = SimpleNamespace(_batches_that_stepped=0, _broadcast_sigterm_tensor=None)
    trainer = SimpleNamespace(
        world_size=2,
        log_every_n_steps=4,
        accumulate_grad_batches=1,
        should_stop=False,
        global_step=0,
        is_global_zero=False,
        fit_loop=SimpleNamespace(epoch_loop=loop),
        received_sigterm=True,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda flag, **_: decisions.append(flag) or flag),
        save_checkpoint=lambda path, weights_only: saved.append(path.name),
    )
    callback = Preemption(tmp_path)
    callback.on_train_start(trainer, None)
    try:
        # Lightning's own per-step SIGTERM broadcast (and read) is dropped; a SIGTERM it caught is taken over
        assert loop._broadcast_sigterm_tensor() is None and callback.received == signal.SIGTERM
        assert hasattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor")  # what it replaces still exists
        for step in range(4):
            loop._batches_that_stepped = trainer.global_step = step
            callback.on_train_batch_end(trainer, None, None, None, step)
            assert trainer.should_stop == (step == 3) and decisions == [True] * (step == 3)
    finally:
        callback.on_train_end(trainer, None)
    assert saved == ["step000003.ckpt"] and callback.result.step == 3
