"""Every config in conf/ composes, and every experiment instantiates its module."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from pretrain.cli import main
from pretrain.config import CONF_DIR, load_config, missing_keys
from pretrain.train import build_module

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_experiments_listed():
    assert {"demo", "mae_vit_b"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment):
    cfg = load_config("pretrain", [f"experiment={experiment}", "data.shards=/x", "run_dir=/y"])
    assert missing_keys(cfg) == []
    module = build_module(cfg)
    grid = [c // p for c, p in zip(cfg.data.crop_size, module.backbone.patch_size)]
    assert list(module.backbone.grid) == grid
    assert module.masking.mask_ratio == cfg.objective.masking.mask_ratio
    n_params = sum(p.numel() for p in module.backbone.parameters())
    if experiment == "mae_vit_b":
        assert 85e6 < n_params < 90e6 and module.backbone.patch_size == (16, 16, 16)
        assert list(cfg.data.crop_size) == [96, 96, 96] and cfg.objective.masking.mask_ratio == 0.75


@pytest.mark.parametrize("group", ["model", "logger", "objective", "optim", "trainer", "data"])
def test_every_group_option_composes(group):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        cfg = load_config("pretrain", [f"{group}={option}", "data.shards=/x", "run_dir=/y"])
        assert group in cfg
        if group == "model":
            assert instantiate(cfg.model, img_size=[32, 32, 32]).grid is not None


@pytest.mark.parametrize("name", ["shard", "export", "bench"])
def test_command_configs_compose_and_name_their_required_keys(name):
    assert missing_keys(load_config(name, [])) != []


def test_cli_help_and_errors(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("shard", "pretrain", "export", "bench", "demo", "mae_vit_b"))
    assert main(["frobnicate"]) == 2
    assert main(["shard", "input=/nowhere"]) == 2
    assert "missing required setting(s): output=..." in capsys.readouterr().err
    assert main(["bench"]) == 2
    assert main(["pretrain", "experiment=nope", "data.shards=/x", "run_dir=/y"]) == 2
    assert "experiment" in capsys.readouterr().err
    assert main(["pretrain", "experiment=demo", "data.shards=/x", "run_dir=/y", "model.patch_size=7"]) == 2
    assert "divisible by patch_size" in capsys.readouterr().err


def test_conf_dir_is_the_repository_conf():
    assert CONF_DIR == Path(__file__).resolve().parent.parent / "conf"
