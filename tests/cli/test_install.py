"""`pip install .` (not editable), as a cluster image installs voxfm: one import root, `voxfm`, that runs from any
directory and never collides with a user's own `models`, `data` or `pretrain`."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

USER_CODE = {  # what a lab project next to its launch scripts typically holds
    "models/__init__.py": "WHO = 'the user models package'\n",
    "data/__init__.py": "WHO = 'the user data package'\n",
    "pretrain.py": "WHO = 'the user pretrain module'\n",
    "notebook.py": "import voxfm\nimport models\nimport data\nimport pretrain\n"
    "print(voxfm.__version__, models.WHO, data.WHO, pretrain.WHO, sep='|')\n",
}


def test_a_wheel_install_is_one_import_root_that_runs_beside_a_users_own_packages(tmp_path, shard_dir):
    site = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert (site / "voxfm" / "conf" / "experiment" / "demo.yaml").is_file() and (site / "bin" / "voxfm").is_file()
    top_level = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".egg-info")) and p.name != "bin"}
    assert top_level == {"voxfm"}, top_level  # nothing else of voxfm at the top of site-packages
    dist = importlib.metadata.Distribution.at(next(site.glob("voxfm-*.dist-info")))
    tops = {f.parts[0] for f in dist.files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
    assert tops == {"voxfm"}, tops

    project = tmp_path / "project"  # a user's project with its own models/, data/ and pretrain.py
    for name, text in USER_CODE.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "VOXFM_CONF"} | {
        "PYTHONPATH": str(site),
        "WANDB_MODE": "offline",
    }
    names = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps(sorted(k for k, v in m.packages_distributions().items() "
            "if 'voxfm' in v)))",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert json.loads(names.stdout) == ["voxfm"], names.stdout + names.stderr
    version = subprocess.run(
        [sys.executable, str(site / "bin" / "voxfm"), "--version"], cwd=project, env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.strip() == "voxfm 0.1.0", version.stdout + version.stderr
    notebook = subprocess.run([sys.executable, "notebook.py"], cwd=project, env=env, capture_output=True, text=True)
    assert notebook.stdout.strip() == "0.1.0|the user models package|the user data package|the user pretrain module", (
        notebook.stdout + notebook.stderr
    )

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxfm",
            "pretrain",
            "experiment=demo",
            f"data.shards={shard_dir}",
            "run_dir=run",
            "trainer.max_steps=2",
            "data.num_workers=0",
            "trainer.progress_bar=false",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "finished at step 2" in run.stdout and (project / "run" / "checkpoints" / "last.ckpt").is_file()
    stored = (project / "run" / "config.yaml").read_text()
    assert "_target_: voxfm.models.vit.ViT" in stored and "voxfm.pretrain.objectives.mae.MAEObjective" in stored
    export = subprocess.run(
        [sys.executable, str(site / "bin" / "voxfm"), "export", "checkpoint=run", "output=export"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert (project / "export" / "backbone.safetensors").is_file()
    where = json.loads((project / "export" / "backbone.json").read_text())["config"]["model"]["_target_"]
    assert where == "voxfm.models.vit.ViT"
