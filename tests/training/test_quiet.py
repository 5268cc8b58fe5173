"""A quiet start: a run prints voxfm's own lines, not Lightning's banners, table or known deprecation noise."""

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.training.test_faults import ENV

pytestmark = pytest.mark.slow


def test_a_run_and_its_resume_print_only_voxfms_lines(tmp_path, shard_dir):
    cmd = [sys.executable, "-m", "voxfm", "pretrain", "experiment=demo", f"data.shards={shard_dir}"]
    cmd += [f"run_dir={tmp_path / 'run'}", "trainer.progress_bar=false", "data.num_workers=0"]
    for steps in (2, 3):
        done = subprocess.run([*cmd, f"trainer.max_steps={steps}"], cwd=REPO, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert lines and all(line.startswith("voxfm: ") for line in lines), lines
        assert "voxfm: model: backbone ViT" in done.stdout
