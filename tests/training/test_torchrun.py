"""Two "nodes" on 127.0.0.1 through scripts/torchrun.sh (one CPU process each): train, checkpoint, resume;
rank 0 alone writes events and metrics."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.distributed


def _two_nodes(shard_dir, run_dir, max_steps):
    port = free_port()
    procs = []
    paths = [run_dir.parent / f"node{node}-{max_steps}.log" for node in (0, 1)]
    logs = [open(path, "w") for path in paths]
    for node in (0, 1):
        env = {
            **os.environ,
            "WANDB_MODE": "offline",
            "PYTHONPATH": str(REPO),
            "PYTHON": sys.executable,
            "NNODES": "2",
            "NODE_RANK": str(node),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GPUS_PER_NODE": "1",
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [
                    "bash",
                    str(REPO / "scripts" / "torchrun.sh"),
                    "experiment=demo",
                    f"data.shards={shard_dir}",
                    f"run_dir={run_dir}",
                    "trainer.accelerator=cpu",
                    f"trainer.max_steps={max_steps}",
                    "trainer.checkpoint_every_n_steps=2",
                    "trainer.log_every_n_steps=1",
                    "trainer.progress_bar=false",
                    "data.num_workers=0",
                ],
                cwd=REPO,
                env=env,
                stdout=logs[node],
                stderr=subprocess.STDOUT,
            )
        )
    for p, log in zip(procs, logs):  # output goes to files: a full pipe would block one node inside a collective
        p.wait(timeout=600)
        log.close()
    outputs = [log.read_text() for log in paths]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    return outputs


def test_two_node_torchrun_trains_checkpoints_and_resumes(tmp_path, shard_dir):
    run_dir = tmp_path / "run"
    first = _two_nodes(shard_dir, run_dir, 4)
    assert "2 rank(s), global batch 8" in first[0] and "finished at step 4" in first[0]
    assert "finished at step" not in first[1]  # node 1's rank writes and prints nothing of the run's record
    _two_nodes(shard_dir, run_dir, 6)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("end", 4), ("resume", 4), ("end", 6)]
    assert events[0]["world_size"] == 2
    assert sorted(p.name for p in (run_dir / "metrics").iterdir()) == ["metrics.csv"]  # one file, both runs
    rows = (run_dir / "metrics" / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[rows[0].split(",").index("step")]) for r in rows[1:]]
    assert len(rows[1:]) == len(set(rows[1:])) and steps == sorted(steps) and max(steps) >= 4  # one writer
