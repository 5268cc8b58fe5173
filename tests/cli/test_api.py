"""The README's Python API example, run verbatim, and the API's own promises: importing voxfm loads nothing heavy,
and a bad setting raises the CLI's ConfigError naming the key."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    (block,) = re.findall(r"<!-- api-example -->\n```python\n(.*?)```", text, flags=re.S)
    return block


@pytest.mark.slow
def test_the_readme_api_example_runs_verbatim(tmp_path, phantom_dir):
    (tmp_path / "volumes").mkdir()
    for p in phantom_dir.glob("*.nii.gz"):
        if "_label" not in p.name:
            (tmp_path / "volumes" / p.name).symlink_to(p)
    (tmp_path / "example.py").write_text(readme_example())
    out = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "voxfm 0.1.0" and lines[-1] == "ViT [1.5, 1.5, 1.5] RAS"
    assert "finished at step 20" in out.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "export" / "backbone.safetensors").is_file()


def test_import_voxfm_is_light_and_names_its_api():
    code = (
        "import sys, voxfm; heavy = [m for m in ('torch', 'lightning', 'hydra') if m in sys.modules]; "
        "print(voxfm.__version__, heavy, callable(voxfm.pretrain), callable(voxfm.load_backbone))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO.parent)
    assert out.stdout.split() == ["0.1.0", "[]", "True", "True"], out.stdout + out.stderr


def test_a_bad_setting_raises_the_clis_config_error(shard_dir):
    import voxfm
    from voxfm.pretrain.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.max_steps='ten'"):
        voxfm.compose(
            "pretrain", "experiment=demo", data={"shards": shard_dir}, run_dir="/y", trainer={"max_steps": "ten"}
        )
    cfg = voxfm.compose(
        "pretrain",
        "experiment=demo",
        data={"shards": shard_dir, "crop_size": [32, 32, 32]},
        run_dir="/y",
        trainer={"compile": False},
    )
    assert list(cfg.data.crop_size) == [32, 32, 32] and cfg.trainer.compile is False
    with pytest.raises(ConfigError, match="not a `voxfm export` folder"):
        voxfm.load_backbone("/nonexistent")


def test_keywords_are_quoted_and_finetunes_experiment_keyword_is_its_own(shard_dir):
    import voxfm

    odd = "/tmp/run (1), it's ${not} an=interpolation"
    assert voxfm.compose("pretrain", experiment="demo", data={"shards": shard_dir}, run_dir=odd).run_dir == odd
    cfg = voxfm.compose(
        "finetune", experiment="demo_finetune", backbone="none", data={"shards": shard_dir}, run_dir="/r"
    )
    assert cfg.steps == 100  # conf/finetune_experiment/demo_finetune.yaml


def test_a_crafted_backbone_json_imports_nothing_it_names(tmp_path):
    """backbone.json is data: `kwargs_requires_import` as a string (so `in` would match substrings) or a class outside
    the allowlist is refused before anything is imported or called."""
    import json

    import voxfm
    from voxfm.pretrain.errors import ConfigError

    (tmp_path / "backbone.safetensors").write_bytes(b"")
    resenc = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    crafted = [
        {
            "class": resenc,
            "kwargs": {"nonlin": "subprocess.getoutput", "nonlin_kwargs": {"cmd": "touch pwned"}},
            "kwargs_requires_import": "conv_op norm_op nonlin",
        },
        {"class": resenc, "kwargs": {"nonlin": "subprocess.getoutput"}, "kwargs_requires_import": ["nonlin"]},
        {"class": "subprocess.Popen", "kwargs": {"args": ["touch", "pwned"]}, "kwargs_requires_import": []},
    ]
    for meta in crafted:
        (tmp_path / "backbone.json").write_text(json.dumps(meta))
        with pytest.raises(ConfigError):
            voxfm.load_backbone(tmp_path)
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()
