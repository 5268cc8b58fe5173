"""Two-process DDP on CPU (gloo, ddp_spawn): both ranks train, checkpoints and the end step are right."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.distributed


# ddp_spawn pickles the model, which nnU-Net's blocks forbid (a lambda inside): ResEnc runs use ddp, whose
# launcher starts the second rank as a subprocess. simclr also gathers its negatives across the two ranks; dino
# all-reduces its centres and moves its EMA teacher on both ranks (and its heads must pickle for ddp_spawn).
@pytest.mark.parametrize(
    "experiment,strategy", [("demo", "ddp_spawn"), ("demo_simclr", "ddp"), ("demo_dino", "ddp_spawn")]
)
def test_two_rank_ddp_run_reaches_max_steps(tmp_path, shard_dir, experiment, strategy):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        f"experiment={experiment}",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        "trainer.max_steps=6",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"strategy={strategy}",
        "data.num_workers=0",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=2",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port())}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    if experiment == "demo_dino":
        assert int(ckpt["state_dict"]["objective.teacher_steps"]) == 6
    assert {"step000003.ckpt", "step000006.ckpt"} <= {p.name for p in (run_dir / "checkpoints").iterdir()}
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("end", 6)]
    rows = (run_dir / "metrics" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = {int(r.split(",")[header.index("step")]) for r in rows[1:]}
    assert steps == {1, 3, 5}  # rank 0 logs every 2nd step, once


def test_a_two_rank_ddp_checkpoint_resumes_on_one_process(tmp_path, shard_dir):
    """World size 2 → 1: a DDP checkpoint holds the whole model and optimiser, so any world size resumes it. With
    the device pool, each rank's pool state is in the checkpoint (gathered); one process cannot replay two ranks'
    streams, and says so."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), "MASTER_PORT": str(free_port())}
    base = [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        "trainer.checkpoint_every_n_steps=2",
        "data.num_workers=0",
        "data.device_pool_gib=0.25",
        "trainer.progress_bar=false",
        "trainer.accelerator=cpu",
    ]
    two = subprocess.run(
        [*base, "trainer.max_steps=4", "trainer.devices=2", "strategy=ddp_spawn"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    states = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["voxfm_feed"]
    assert len(states["states"]) == 2 and states["states"][0]["held"] != states["states"][1]["held"]
    one = subprocess.run(
        [*base, "trainer.max_steps=6", "trainer.devices=1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "at step 4" in one.stdout and "1 rank(s)" in one.stdout
    assert "draws fresh batches, seeded by the resume step: the checkpoint holds 2 rank state(s)" in one.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
