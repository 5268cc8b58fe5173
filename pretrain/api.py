"""voxfm's Python API: what the `voxfm` command does, as functions (both compose and check a command's config the
same way and call the same code).

    cfg = voxfm.compose("pretrain", "experiment=demo", data={"shards": "shards"}, run_dir="run")
    module = voxfm.build_module(cfg)       # the LightningModule, for your own `lightning.Trainer`
    loader = voxfm.build_loader(cfg)       # batches of regions ({"image": [B, C, X, Y, Z], ...})
    voxfm.shard(input="volumes", output="shards")                                  # = `voxfm shard ...`
    voxfm.pretrain("experiment=demo", data={"shards": "shards"}, run_dir="run")   # = `voxfm pretrain ...`
    voxfm.export("run", "export")          # = `voxfm export checkpoint=run output=export`
    backbone = voxfm.load_backbone("export")   # .network (weights loaded), .preprocessing, .meta

Settings are Hydra overrides (`"key=value"`, `"group=option"`) or keywords: `run_dir="run"` is `run_dir=run`, and
a mapping sets keys below it (`data={"shards": "s"}` is `data.shards=s`). Every config is checked as the CLI checks
it; what is wrong raises `voxfm.pretrain.errors.ConfigError` (the CLI's exit 2) naming the key.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from voxfm.pretrain.cli.compose import checked_config
from voxfm.pretrain.errors import ConfigError


def overrides_of(args: tuple[str, ...], keys: dict) -> list[str]:
    """Positional `key=value` strings, then keywords as overrides (nested mappings as dotted keys)."""
    out = list(args)

    def add(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}", v)
        else:
            out.append(f"{prefix}={_value(value)}")

    for key, value in keys.items():
        add(key, value)
    return out


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def compose(command: str = "pretrain", *overrides: str, **keys) -> DictConfig:
    """The config of `command` ("pretrain", "export", "finetune", "shard", "inspect"), composed from `conf/` and
    checked as `voxfm <command>` checks it."""
    if command == "finetune":  # its experiments live in conf/finetune_experiment/, as on the command line
        overrides = tuple(f"finetune_{o}" if o.startswith("experiment=") else o for o in overrides)
        if "experiment" in keys:
            keys = {**keys, "finetune_experiment": keys.pop("experiment")}
    cfg = checked_config(command, overrides_of(tuple(overrides), keys))
    if cfg is None:
        raise ConfigError("--cfg prints a config on the command line; compose() returns it")
    return cfg


def _config(cfg_or_overrides, keys: dict) -> DictConfig:
    if isinstance(cfg_or_overrides, DictConfig):
        if keys:
            raise ConfigError("give either a composed config or overrides, not both")
        return cfg_or_overrides
    return compose("pretrain", *(cfg_or_overrides or ()), **keys)


def build_module(cfg: DictConfig | list[str] | None = None, **keys):
    """The pretraining LightningModule (backbone, objective, device-side views, optimiser) of a pretrain config,
    as `voxfm pretrain` builds it, for a `lightning.Trainer` of your own."""
    from voxfm.pretrain.launch.build import build_module as build

    return build(_config(cfg, keys))


def build_loader(cfg: DictConfig | list[str] | None = None, **keys):
    """The loader `voxfm pretrain` trains from: an endless stream of batches of regions cut from `data.shards`
    (seeded by `seed`), each region big enough for the objective's views."""
    from hydra.utils import instantiate

    from voxfm.pretrain.errors import config_errors
    from voxfm.pretrain.launch.build import build_loader as loader
    from voxfm.pretrain.launch.build import build_stream, trains_on_gpu

    cfg = _config(cfg, keys)
    with config_errors():
        region_size = cfg.data.region_size or instantiate(cfg.objective.views).region_size_needed()
    return loader(build_stream(cfg.data, region_size, seed=cfg.seed), cfg.data, trains_on_gpu(cfg.trainer))


def shard(*overrides: str, **keys) -> dict:
    """`voxfm shard input=... output=...`: NIfTI volumes and DICOM series into shards; its report (report.json)."""
    from voxfm.pretrain.cli.programs import shard_report

    return shard_report(compose("shard", *overrides, **keys))


def pretrain(*overrides: str, **keys) -> Path:
    """`voxfm pretrain ...`: trains until `trainer.max_steps` (a run_dir with checkpoints resumes); the run_dir."""
    from voxfm.pretrain.launch.run import run_pretrain

    cfg = compose("pretrain", *overrides, **keys)
    run_pretrain(cfg, validated=True)
    return Path(cfg.run_dir)


def export(checkpoint: str | Path, output: str | Path, format: str = "monai", in_channels: int | None = None):  # noqa: A002, E501
    """`voxfm export checkpoint=... output=... format=...`: the export folder."""
    from voxfm.pretrain.export.run import run_export

    cfg = compose("export", checkpoint=str(checkpoint), output=str(output), format=format, in_channels=in_channels)
    return run_export(cfg.checkpoint, cfg.output, cfg.in_channels, cfg.format)


@dataclass
class Backbone:
    """An exported backbone: `network` (weights loaded, eval mode), `preprocessing` (what its inputs must look
    like: spacing, orientation, axis order, intensity normalisation per modality) and the export's whole `meta`."""

    network: object
    preprocessing: dict
    meta: dict = field(repr=False)


PREPROCESSING = ("spacing", "orientation", "axis_order", "normalisation")


def load_backbone(export_dir: str | Path) -> Backbone:
    """The network of a `voxfm export` folder: format=monai builds the exported class (MONAI's ViT, nnU-Net's
    ResidualEncoderUNet) named in backbone.json, format=full builds voxfm's own backbone from its stored config;
    both through the allowlist of voxfm's backbones (backbone.json is data), weights loaded strictly. For
    format=nnunet and nnssl, nnU-Net's own loaders are the way (the export's README.md shows them)."""
    from safetensors.torch import load_file

    from voxfm.models.weights import load_strict
    from voxfm.pretrain.config.renamed import upgraded
    from voxfm.pretrain.errors import config_errors
    from voxfm.pretrain.export.model_card import SNIPPET_CLASSES
    from voxfm.pretrain.training.checkpoints import backbone_from_config, check_config_tree

    path = Path(export_dir)
    if (path / "full.json").is_file():
        meta = _read_json(path / "full.json")
        check_config_tree(meta, f"{path}/full.json")
        config = upgraded(meta.get("config") or {})
        network = backbone_from_config(config.get("model"), f"{path}/full.json: config.model")
        prefix = "backbone."
        weights = {
            k[len(prefix) :]: v for k, v in load_file(str(path / "model.safetensors")).items() if k.startswith(prefix)
        }
    elif (path / "backbone.json").is_file() and (path / "backbone.safetensors").is_file():
        meta = _read_json(path / "backbone.json")
        allowed = {name: name for name in SNIPPET_CLASSES}
        names = [meta.get("class"), *(meta.get("kwargs", {}).get(k) for k in meta.get("kwargs_requires_import", []))]
        refused = [n for n in names if n is not None and not (isinstance(n, str) and n in allowed)]
        if refused or not isinstance(meta.get("kwargs"), dict):
            raise ConfigError(
                f"{path}/backbone.json names {refused or 'no kwargs'}; voxfm loads only {sorted(allowed)}"
            )
        kwargs = {k: _class(v) if v and k in meta["kwargs_requires_import"] else v for k, v in meta["kwargs"].items()}
        with config_errors():
            network = _class(meta["class"])(**kwargs)
        weights = load_file(str(path / "backbone.safetensors"))
    else:
        raise ConfigError(
            f"{path}: not a `voxfm export` folder of format monai or full (backbone.json + "
            "backbone.safetensors, or full.json + model.safetensors); nnunet and nnssl exports load "
            "with nnU-Net's own loaders (see the folder's README.md)"
        )
    with config_errors():
        load_strict(network, weights, str(path))
    network.eval()
    return Backbone(network, {k: meta.get(k) for k in PREPROCESSING}, meta)


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return meta


def _class(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)
