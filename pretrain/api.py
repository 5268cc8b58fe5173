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
    """A keyword's value as Hydra reads it back: strings quoted (a path may hold spaces, commas, `=`, quotes or a
    literal `${`), lists as lists, None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "\\'").replace("${", "\\${") + "'"


def compose(command: str = "pretrain", *overrides: str, **keys) -> DictConfig:
    """The config of `command` ("pretrain", "export", "finetune", "shard", "inspect"), composed from `conf/` and
    checked as `voxfm <command>` checks it."""
    if "--cfg" in overrides:
        raise ConfigError("--cfg prints a config on the command line; compose() returns it")
    return checked_config(command, overrides_of(tuple(overrides), keys))


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
    from voxfm.pretrain.launch.build import build_feed, trains_on_gpu

    cfg = _config(cfg, keys)
    with config_errors():
        region_size = cfg.data.region_size or instantiate(cfg.objective.views).region_size_needed()
    return build_feed(cfg.data, region_size, cfg.seed, trains_on_gpu(cfg.trainer))


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


def export(
    checkpoint: str | Path,
    output: str | Path,
    format: str = "monai",  # noqa: A002
    in_channels: int | None = None,
    student: str | None = None,
):
    """`voxfm export checkpoint=... output=... format=... [student=<name>]`: the export folder."""
    from voxfm.pretrain.export.run import run_export

    keys = dict(checkpoint=str(checkpoint), output=str(output), format=format, in_channels=in_channels, student=student)
    cfg = compose("export", **keys)
    return run_export(cfg.checkpoint, cfg.output, cfg.in_channels, cfg.format, student=cfg.student)


@dataclass
class Backbone:
    """An exported backbone: `network` (weights loaded, eval mode), `preprocessing` (what its inputs must look
    like: spacing, orientation, axis order, intensity normalisation per modality) and the export's whole `meta`."""

    network: object
    preprocessing: dict
    meta: dict = field(repr=False)


PREPROCESSING = ("spacing", "orientation", "axis_order", "normalisation")


def load_backbone(export_dir: str | Path) -> Backbone:
    """The network of a `voxfm export` folder: format=monai (and nnssl, which carries the same backbone.json) builds
    the exported class (MONAI's ViT, nnU-Net's ResidualEncoderUNet or Primus) that backbone.json names, format=full
    voxfm's own backbone from its stored config, with the weights of the model it exports (the teacher for
    self-distillation); both only through allowlists (a file is data: it names, it never imports), weights loaded
    strictly. For format=nnunet, nnU-Net's own loaders are the way (the export's README.md shows them)."""
    from safetensors.torch import load_file

    from voxfm.models.weights import load_strict
    from voxfm.pretrain.errors import config_errors
    from voxfm.pretrain.export.full import full_export_backbone
    from voxfm.pretrain.export.model_card import snippet_classes

    path = Path(export_dir)
    if (path / "full.json").is_file() and (path / "model.safetensors").is_file():
        meta, network, weights = full_export_backbone(path, str(path))
    elif (path / "backbone.json").is_file() and (path / "backbone.safetensors").is_file():
        meta = _read_json(path / "backbone.json")
        kwargs, requires = meta.get("kwargs"), meta.get("kwargs_requires_import", [])
        if not isinstance(kwargs, dict) or not isinstance(requires, list) or not all(k in kwargs for k in requires):
            raise ConfigError(
                f"{path}/backbone.json: kwargs must be a mapping and kwargs_requires_import a list of its keys"
            )
        allowed = snippet_classes()

        def resolve(name):  # only the classes voxfm exports to, named by their full dotted names
            if not isinstance(name, str) or name not in allowed:
                raise ConfigError(f"{path}/backbone.json names {name!r}; voxfm loads only {sorted(allowed)}")
            return _class(name)

        network_class = resolve(meta.get("class"))
        kwargs = {k: resolve(v) if k in requires and v is not None else v for k, v in kwargs.items()}
        with config_errors():
            network = network_class(**kwargs)
        weights = load_file(str(path / "backbone.safetensors"))
    else:
        raise ConfigError(
            f"{path}: not a `voxfm export` folder of format monai, nnssl or full (backbone.json + "
            "backbone.safetensors, or full.json + model.safetensors); nnunet exports load with nnU-Net's own loaders "
            "(see the folder's README.md)"
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
