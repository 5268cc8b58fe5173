"""DeepSpeed ZeRO-2/3 on CPU, 2 processes: train, checkpoint folders, SIGKILL, resume to max_steps, export.

The export (voxfm's weights-only consolidation) equals Lightning's own consolidation of the last checkpoint
and loads strictly into MONAI's ViT.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from monai.networks.nets import ViT as MonaiViT
from safetensors.torch import load_file

from tests.conftest import REPO, free_port
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint, load_checkpoint

ENV = {
    **os.environ,
    "WANDB_MODE": "offline",
    "PYTHONPATH": str(REPO),
    "DS_ACCELERATOR": "cpu",
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions")),
}


pytestmark = pytest.mark.distributed


def _cmd(stage, shards, run_dir):
    return [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        "experiment=demo",
        f"strategy=deepspeed_zero{stage}",
        f"data.shards={shards}",
        f"run_dir={run_dir}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_steps=8",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=4",
        "data.num_workers=0",
        "model.num_layers=4",
    ]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_resumes_after_a_kill_and_exports(tmp_path, shard_dir, stage):
    run_dir = tmp_path / "run"
    ENV["MASTER_PORT"] = str(free_port())  # see tests/conftest.py: not Lightning's ephemeral pick
    log = open(tmp_path / "first.log", "w")  # a file, not a pipe nobody reads: a full pipe would stall a rank
    proc = subprocess.Popen(
        _cmd(stage, shard_dir, run_dir), cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 600
    while find_resume_checkpoint(run_dir / "checkpoints")[1] < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks
    proc.wait()
    log.close()
    killed_at = find_resume_checkpoint(run_dir / "checkpoints")[1]
    assert 2 <= killed_at < 8, (tmp_path / "first.log").read_text()[-3000:]
    assert (run_dir / "checkpoints" / f"step{killed_at:06d}.ckpt" / "latest").is_file()  # a folder per checkpoint

    second = subprocess.run(
        _cmd(stage, shard_dir, run_dir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"at step {killed_at}" in second.stdout
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 8
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][-2:] == ["resume", "end"] and events[-1]["step"] == 8

    export = subprocess.run(
        [sys.executable, "-m", "voxfm", "export", f"checkpoint={run_dir}", f"output={tmp_path / 'export'}"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    meta = json.loads((tmp_path / "export" / "backbone.json").read_text())
    weights = load_file(str(tmp_path / "export" / "backbone.safetensors"))
    assert meta["step"] == 8
    MonaiViT(**meta["monai_kwargs"]).load_state_dict(weights, strict=True)

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    lightning = convert_zero_checkpoint_to_fp32_state_dict(run_dir / "checkpoints" / "last.ckpt", tmp_path / "fp32.pt")
    reference = {k[len("backbone.") :]: v for k, v in lightning["state_dict"].items() if k.startswith("backbone.")}
    assert reference and all(torch.equal(weights[k], v.float()) for k, v in reference.items())

    # world size 2 -> 1 through DeepSpeed's universal checkpoint: one process resumes the 2-rank step-8 folder
    (run_dir / "checkpoints" / "last.ckpt").rename(run_dir / "checkpoints" / "last-2ranks.ckpt")
    # one more step on one process: its weights continue from step 8 (one step away), not from a fresh start
    one = subprocess.run(
        [
            *_cmd(stage, shard_dir, run_dir),
            "trainer.devices=1",
            "strategy.universal_checkpoint=true",
            "trainer.max_steps=9",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "step000008.ckpt.universal at step 8" in one.stdout and "1 rank(s)" in one.stdout
    from voxfm.pretrain.training.checkpoints import consolidate_deepspeed

    def distance(a, b):
        return sum((a[k].float() - b[k].float()).pow(2).sum() for k in b if k.startswith("backbone.")).sqrt()

    nine, eight, six = (
        consolidate_deepspeed(run_dir / "checkpoints" / f"step00000{s}.ckpt")["state_dict"] for s in (9, 8, 6)
    )
    assert distance(nine, eight) < 0.5 * distance(nine, six)


def test_zero_bf16_feeds_the_stage_images_to_bf16_weights(tmp_path, shard_dir):
    """DeepSpeed bf16 keeps bf16 weights: the float images the view pipeline makes must reach them as bf16 (they
    once stayed float32 and the first step failed: 'Input type (float) and bias type (c10::BFloat16)')."""
    run_dir = tmp_path / "run"
    env = {**ENV, "MASTER_PORT": str(free_port())}
    cmd = [
        *_cmd(2, shard_dir, run_dir),
        "trainer.devices=1",
        "trainer.max_steps=2",
        "trainer.precision=bf16-mixed",
        "trainer.images_every_n_steps=1",
        "model.num_layers=2",
        "trainer.log_every_n_steps=1",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    rows = (run_dir / "metrics" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("train/loss")
    losses = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert len(list((run_dir / "images").glob("*.png"))) == 2


def test_zero2_dino_teacher_follows_the_whole_student(tmp_path, shard_dir):
    """The EMA teacher under ZeRO-2 (2 processes) reads the full, updated student weights: at momentum 0 it equals
    the student exactly after the last step, on the consolidated checkpoint; DINOv2's recipe runs with it."""
    from voxfm.pretrain.training.checkpoints import consolidate_deepspeed

    run_dir = tmp_path / "run"
    env = {**ENV, "MASTER_PORT": str(free_port())}
    cmd = [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        "experiment=demo_dino",
        "strategy=deepspeed_zero2",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_steps=3",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        "trainer.images_every_n_steps=0",
        "objective.loss.momentum_start=0.0",
        "objective.loss.momentum_end=0.0",
        "optim.layer_decay=0.9",
        "optim.weight_decay_end=0.2",
        "optim.freeze_last_layer_steps=1",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = consolidate_deepspeed(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert int(state["objective.teacher_steps"]) == 3
    student = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    teacher = {
        k[len("objective.teacher_backbone.") :]: v
        for k, v in state.items()
        if k.startswith("objective.teacher_backbone.")
    }
    assert student.keys() == teacher.keys() and all(torch.equal(teacher[k], v) for k, v in student.items())


def test_zero3_compiles_each_block_whole_and_the_views_as_one_graph(tmp_path, shard_dir):
    """Under ZeRO-3 the blocks compile one by one (its parameter hooks break a whole-step graph), each a ZeRO-3 leaf
    that gathers its own parameters: no hook sits inside a block, so no block's forward breaks into pieces and
    nothing reaches dynamo's recompile limit (with hooks on every Linear both happened, and the rest ran eagerly).
    The MAE decoder's blocks compile the same way; the views, which hold no parameters, compile as one graph."""
    env = {**ENV, "MASTER_PORT": str(free_port()), "TORCH_LOGS": "graph_breaks,recompiles"}
    cmd = [
        *_cmd(3, shard_dir, tmp_path / "run"),
        "trainer.devices=1",
        "trainer.max_steps=3",
        "trainer.compile=true",
        "trainer.activation_checkpointing=true",
        "trainer.images_every_n_steps=2",
        "model.num_layers=2",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "torch.compile of the views" in log
    assert "block by block (ZeRO-3): 2 backbone blocks, 1 objective blocks" in log, log[-3000:]
    assert "recompile_limit" not in log
    split = [line for line in log.splitlines() if "torch_dynamo_resume_in" in line and str(REPO / "models") in line]
    assert not split, split[:3]
