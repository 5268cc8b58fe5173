"""`pip install .` (not editable), as a cluster image installs voxfm: it runs from any directory."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_a_wheel_install_finds_its_configs_from_any_directory(tmp_path, shard_dir):
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(site), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (site / "conf" / "experiment" / "demo.yaml").is_file() and (site / "bin" / "voxfm").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "VOXFM_CONF"} | {"PYTHONPATH": str(site),
                                                                        "WANDB_MODE": "offline"}
    where = subprocess.run([sys.executable, "-c", "import pretrain, conf; print(pretrain.__file__, conf.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.stdout.count(str(site)) == 2, where.stdout + where.stderr  # the installed copy, not the checkout
    run = subprocess.run([sys.executable, str(site / "bin" / "voxfm"), "pretrain", "experiment=demo",
                          f"data.shards={shard_dir}", "run_dir=run", "trainer.max_steps=2", "data.num_workers=0",
                          "trainer.progress_bar=false"], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "finished at step 2" in run.stdout and (elsewhere / "run" / "checkpoints" / "last.ckpt").is_file()
