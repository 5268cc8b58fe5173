"""Composing Hydra configs from `conf/` without Hydra's working-directory and logging side effects; a config
that does not compose (an unknown key or option, a bad override, an unresolvable interpolation) is a
`ConfigError` naming the key, with a "did you mean" where a close key exists; `checked_config`, the one check
every command and bench runs on its composed config before torch is imported."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from voxfm.pretrain.config.packages import check_packages
from voxfm.pretrain.config.renamed import notice, renamed_override, renamed_target
from voxfm.pretrain.errors import ConfigError


def _packaged_conf() -> Path:
    """conf/ is a package (YAML as package data), so a wheel install finds it as well as a source checkout."""
    from voxfm import conf

    return Path(conf.__file__).resolve().parent


CONF_DIR = Path(os.environ.get("VOXFM_CONF") or _packaged_conf())


def load_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose `conf/<name>.yaml` with command-line style overrides (`key=value`, `group=option`). Keys renamed
    in this release are read under their new names (`pretrain/config/renamed.py`)."""
    overrides = [renamed_override(o) for o in overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    with open_dict(cfg):
        del cfg["hydra"]
        if "experiment_name" in cfg and choices.get("experiment") is not None:
            cfg.experiment_name = choices.get("experiment")  # the recipe's name, for checkpoints and exports
    objective = cfg.get("objective") if "objective" in cfg else None
    if isinstance(objective, DictConfig) and "stage" in objective:  # an experiment file of an older release
        notice("objective.stage", "objective.views")
        with open_dict(cfg):
            objective.views = OmegaConf.merge(objective.get("views") or {}, objective.stage)
            del objective["stage"]
            # the command line still wins over that file, as it does over every other
            for override in OverridesParser.create().parse_overrides(overrides):
                if override.key_or_group.startswith("objective.views.") and not override.is_delete():
                    OmegaConf.update(cfg, override.key_or_group, override.value(), force_add=True)
    _renamed_targets(cfg)
    _mask_cell_follows_the_backbone(cfg)
    return cfg


def _mask_cell_follows_the_backbone(cfg: DictConfig) -> None:
    """`objective.views.masking.patch_size: null` is the backbone's token edge: the argument its declaration names
    (`token_size`), as an interpolation, so `--cfg` and the checks see the number. A backbone without tokens leaves
    it null, and the config checks refuse that in one line."""
    if not isinstance(cfg.get("model"), DictConfig) or not isinstance(cfg.get("objective"), DictConfig):
        return
    masking = OmegaConf.select(cfg, "objective.views.masking", default=None)
    if not isinstance(masking, DictConfig) or "patch_size" not in masking or masking.patch_size is not None:
        return
    from voxfm.pretrain.config.declarations import read_declared

    target = cfg.model.get("_target_")
    try:
        declared = read_declared(target) if isinstance(target, str) else None
    except ValueError:
        return  # the schema check names the broken declaration
    token_size = declared.declaration.token_size if declared is not None else None
    if token_size is not None:
        masking.patch_size = (
            f"${{model.{token_size}}}" if token_size in cfg.model else declared.defaults().get(token_size)
        )


def _renamed_targets(node) -> None:
    """Old class names in the composed config (an experiment file of an older release) → their new names."""
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if renamed_target(target) != target:
            node["_target_"] = renamed_target(target)
        for key in node:
            if not (OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key)):
                _renamed_targets(node[key])


def missing_keys(cfg: DictConfig) -> list[str]:
    return sorted(OmegaConf.missing_keys(cfg))


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """`load_config`, its failures as one `ConfigError` line."""
    bad = [o for o in overrides if "=" not in o and not o.startswith("~")]  # `~key` deletes a key
    if bad:
        raise ConfigError(f"expected key=value overrides, got {bad}")
    try:
        return load_config(name, overrides)
    except HydraException as err:
        raise ConfigError(explain(err, name, overrides)) from None
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None


CFG_FLAGS = ("--cfg", "-c")
CFG_PARTS = ("job", "all")  # Hydra's `--cfg job`: voxfm has no Hydra runtime config, so both show the job's


def _without_cfg_flag(overrides: list[str]) -> tuple[list[str], bool]:
    kept, shown, i = [], False, 0
    while i < len(overrides):
        if overrides[i] in CFG_FLAGS:
            shown = True
            i += 2 if i + 1 < len(overrides) and overrides[i + 1] in CFG_PARTS else 1
            continue
        kept.append(overrides[i])
        i += 1
    return kept, shown


def composed_or_shown(name: str, overrides: list[str]) -> DictConfig | None:
    """`compose_config`, or None after printing it, resolved, when the overrides hold `--cfg` (`--cfg job`, as
    Hydra spells it, too); a value that does not resolve is printed as it is written and then named in a
    ConfigError (exit 2). OmegaConf drops the YAML's comments: the first line says where they are."""
    overrides, shown = _without_cfg_flag(overrides)
    cfg = compose_config(name, overrides)
    if shown:
        print(f"# voxfm {name}, composed. What each key means: `voxfm {name} --help`, or the comments in {CONF_DIR}")
        try:
            print(OmegaConf.to_yaml(cfg, resolve=True))
        except OmegaConfBaseException as err:
            print(OmegaConf.to_yaml(cfg))
            raise ConfigError(f"--cfg printed the config unresolved: {str(err).splitlines()[0]}") from None
        return None
    return cfg


def resolved(cfg: DictConfig) -> dict:
    """The config as plain containers, interpolations resolved; a missing value (`???`) stays `"???"`."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def command_overrides(command: str, overrides: list[str]) -> list[str]:
    """The overrides as conf/<command>.yaml names them: `experiment=` of `finetune` names conf/finetune_experiment/
    (keys renamed in this release are read under their new names in `load_config`)."""
    if command == "finetune":
        return [f"finetune_{o}" if o.startswith("experiment=") else o for o in overrides]
    return overrides


def checked_config(command: str, overrides: list[str]) -> DictConfig | None:
    """The composed config of `command` (`conf/<command>.yaml`, e.g. "pretrain" or "bench/model"), checked against
    its schema; None after `--cfg` printed it. `experiment=` of `finetune` names conf/finetune_experiment/."""
    cfg = composed_or_shown(command, command_overrides(command, overrides))
    if cfg is None:
        return None
    if command != "pretrain":
        from voxfm.pretrain.config.commands import validate_command

        plain = resolved(cfg)
        validate_command(command, plain)
        if command == "finetune" and plain["backbone"] == "none":  # with an export, its file says the network
            check_packages({"model": plain["model"]}, try_imports=True)
        return cfg
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError("missing required setting(s): " + ", ".join(f"{k}=..." for k in missing))
    from voxfm.pretrain.config.schema import validate_pretrain

    plain = resolved(cfg)
    check_packages(plain)  # first: a quick read of source files, while the shard-set check loads webdataset
    validate_pretrain(plain)  # once per `voxfm pretrain`: run_pretrain is told so
    check_packages(plain, try_imports=True)  # last: importing an optional package loads torch
    return cfg


def explain(err: HydraException, name: str, overrides: list[str]) -> str:
    """Hydra's message without its search-path dump, plus "did you mean" for a key that does not exist."""
    text = str(err).split("\nConfig search path:")[0].strip()
    match = re.search(r"Could not override '([\w.]+)'", text)
    if match is None:
        return text
    key = match.group(1)
    parent, _, leaf = key.rpartition(".")
    try:
        node = OmegaConf.select(load_config(name, [o for o in overrides if not o.startswith(key + "=")]), parent or "")
    except HydraException:
        return text
    if not isinstance(node, DictConfig):
        return text
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1)
    hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    return f"{key}: unknown key{hint} (to add a new key on purpose: +{key}=...)"
