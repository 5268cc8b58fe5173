"""End to end, for every demo twin: shard → pretrain → SIGKILL after the step-20 checkpoint → same command →
ends at step 40, and the trained weights have a lower loss than fresh ones on the same batches."""

import json
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO
from voxfm.data.stream.regions import RegionStream, region_loader
from voxfm.data.views.counter_random import step_key
from voxfm.pretrain.launch.build import build_module
from voxfm.pretrain.training.checkpoints import load_checkpoint

DEMOS = {  # experiment → extra overrides (a little more work per step so the kill lands mid-run)
    "demo": ["model.num_layers=4", "data.batch_size=8"],
    "demo_mim": [],
    "demo_simclr": ["data.batch_size=16"],  # 4 (or 8) regions are too few negatives for a stable 40 steps
    "demo_mae_contrastive": ["model.num_layers=4"],
    "demo_primus": ["model.eva_depth=4", "data.batch_size=8"],
}
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli_shards(tmp_path_factory, phantom_dir):
    out = tmp_path_factory.mktemp("cli_shards")
    shard = subprocess.run(
        [sys.executable, "-m", "voxfm", "shard", f"input={phantom_dir}", f"output={out}", "progress=false"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert shard.returncode == 0, shard.stderr[-3000:]
    assert "sharded 6/6 inputs" in shard.stdout  # 6 phantoms, each paired with its label map
    return out


def _pretrain_cmd(experiment, shards, run_dir):
    return [
        sys.executable,
        "-m",
        "voxfm",
        "pretrain",
        f"experiment={experiment}",
        f"data.shards={shards}",
        f"run_dir={run_dir}",
        "trainer.max_steps=40",
        "trainer.checkpoint_every_n_steps=10",
        "trainer.progress_bar=false",
        "data.num_workers=0",
        *DEMOS[experiment],
    ]


def _step(ckpt) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def _mean_loss(module, cfg, shards, n_batches=6) -> float:
    """The objective's loss on fixed batches (fixed regions, views and masks), without gradients."""
    stream = RegionStream(
        str(shards),
        cfg.data.region_size or module.view_pipeline.region_size_needed(),
        cfg.data.regions_per_volume,
        cfg.data.foreground_prob,
        8,
        seed=1234,
    )
    losses = []
    with torch.no_grad():
        for i, batch in zip(range(n_batches), region_loader(stream, cfg.data.batch_size, 0)):
            loss, _ = module.objective(
                module.view_pipeline(batch, step_key(torch.device("cpu"), 99, i, 0)), module.backbone
            )
            losses.append(loss.item())
    return sum(losses) / len(losses)


@pytest.mark.parametrize("experiment", list(DEMOS))
def test_killed_run_resumes_from_its_last_checkpoint_and_ends_at_max_steps(tmp_path, cli_shards, experiment):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _pretrain_cmd(experiment, cli_shards, run_dir),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step20 = run_dir / "checkpoints" / "step000020.ckpt"
    deadline = time.time() + 900  # a loaded 2-core machine (CI beside other work) needs minutes
    while not step20.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert step20.exists(), "step 20 was not reached within the deadline"
    # last.ckpt may lag one save behind stepN.ckpt when the kill lands between the two writes
    newest = max((run_dir / "checkpoints").glob("*.ckpt"), key=_step)
    killed_at = _step(newest)
    assert 20 <= killed_at < 40

    second = subprocess.run(
        _pretrain_cmd(experiment, cli_shards, run_dir), cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"at step {killed_at}" in second.stdout and "voxfm: resuming from" in second.stdout
    assert _step(run_dir / "checkpoints" / "last.ckpt") == 40
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "resume", "end"]
    assert events[1]["step"] == killed_at and events[2]["step"] == 40
    # one metrics file for both runs, its step column growing: the resumed run did not start again from 0, and the
    # rows the killed run logged past its checkpoint were dropped, not repeated
    assert sorted(p.name for p in (run_dir / "metrics").iterdir()) == ["metrics.csv"]
    rows = (run_dir / "metrics" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert steps == sorted(steps) and min(steps) < killed_at <= max(steps) == 39
    kept = {p.name for p in (run_dir / "checkpoints").iterdir()}  # trainer.keep_last_n=3: the three newest
    assert {f"step{s:06d}.ckpt" for s in (20, 30, 40)} <= kept and "step000010.ckpt" not in kept

    # the loss falls: the trained weights beat the run's own initial ones (built as the run built them, from
    # `seed`) on the same fixed batches
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create(ckpt["voxfm_config"])
    L.seed_everything(cfg.seed, verbose=False)
    fresh = build_module(cfg)
    trained = build_module(cfg)
    trained.load_state_dict(ckpt["state_dict"])
    before, after = _mean_loss(fresh, cfg, cli_shards), _mean_loss(trained, cfg, cli_shards)
    print(f"{experiment}: loss on fixed batches {before:.4f} fresh -> {after:.4f} after 40 steps")
    assert after < before, (experiment, before, after)
