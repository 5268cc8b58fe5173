"""Composing Hydra configs from `conf/` without Hydra's working-directory and logging side effects."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf


def _packaged_conf() -> Path:
    """conf/ is a package (YAML as package data), so a wheel install finds it as well as a source checkout."""
    import conf

    return Path(conf.__file__).resolve().parent


CONF_DIR = Path(os.environ.get("VOXFM_CONF") or _packaged_conf())


def load_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose `conf/<name>.yaml` with command-line style overrides (`key=value`, `group=option`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def missing_keys(cfg: DictConfig) -> list[str]:
    return sorted(OmegaConf.missing_keys(cfg))
