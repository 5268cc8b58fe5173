"""Loggers that survive resumes: one metrics.csv per run_dir with a growing step column, one W&B run per run_dir;
the pictures a run leaves: its metric curves and captioned reconstructions (the last step's too)."""

import csv
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.training.test_faults import ENV
from voxfm.pretrain.cli.main import main

pytestmark = pytest.mark.slow


def _run(shard_dir, run_dir, steps, *extra):
    args = [
        "pretrain",
        "experiment=demo",
        f"data.shards={shard_dir}",
        f"run_dir={run_dir}",
        f"trainer.max_steps={steps}",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.images_every_n_steps=4",
        "data.num_workers=0",
        *extra,
    ]
    assert main(args) == 0


def test_a_run_resumed_twice_keeps_one_metrics_file_and_one_wandb_run(tmp_path, shard_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    for steps in (2, 4, 30):  # a run resumed twice, ending in a 30-step run
        _run(shard_dir, run_dir, steps, "logger=wandb")
    assert sorted(p.name for p in (run_dir / "metrics").iterdir()) == ["metrics.csv"]
    with open(run_dir / "metrics" / "metrics.csv") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f)]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 29
    run_id = (run_dir / "wandb_id").read_text().strip()
    # offline-run-<time>-<id>[-<n> when two start within a second]
    runs = {p.name.split("-")[3] for p in (run_dir / "wandb").iterdir() if p.name.startswith("offline-run-")}
    assert runs == {run_id}, sorted(os.listdir(run_dir / "wandb"))
    # what W&B keeps: no absolute path, no command line, no picture of the data (log_images is off by default)
    sent = "".join(
        p.read_text(errors="replace") for p in (run_dir / "wandb").rglob("*") if p.suffix in (".yaml", ".json")
    )
    assert str(tmp_path) not in sent and "sys.argv" not in sent and '"args"' not in sent
    assert not list((run_dir / "wandb").rglob("media/images/*"))

    curves = Image.open(run_dir / "metrics.png")
    assert curves.size[0] > 300 and curves.size[1] > 200
    # every 4 steps, and each of the three runs' last step (2, 4, 30)
    expected = [f"step{s:06d}.png" for s in (2, *range(4, 29, 4), 30)]
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == expected
    assert main(["plot", f"run_dir=[{run_dir},{run_dir}]", f"output={tmp_path / 'both.png'}"]) == 0
    assert Image.open(tmp_path / "both.png").size[0] > 300
    assert main(["plot", f"run_dir={tmp_path / 'nowhere'}"]) == 2


def test_tensorboard_writes_event_files_beside_the_csv(tmp_path, shard_dir):
    _run(shard_dir, tmp_path / "run", 2, "logger=[csv,tensorboard]")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "metrics" / "metrics.csv").is_file()


def test_a_resumed_runs_bar_counts_to_max_steps_from_where_it_resumed(tmp_path, shard_dir):
    _run(shard_dir, tmp_path / "run", 2)
    args = [sys.executable, "-m", "voxfm", "pretrain", "experiment=demo", f"data.shards={shard_dir}"]
    args += [f"run_dir={tmp_path / 'run'}", "trainer.max_steps=6", "trainer.log_every_n_steps=2"]
    done = subprocess.run([*args, "data.num_workers=0"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    bar = (done.stdout + done.stderr).replace("\r", "\n")
    assert "2/6 [" in bar and "6/6 [" in bar  # starts at the resumed step, out of max_steps
    assert re.search(r"4/6 \[\d\d:\d\d<\d\d:\d\d", bar)  # elapsed<remaining: an ETA, from this process's own rate
    assert "v_num" not in bar
