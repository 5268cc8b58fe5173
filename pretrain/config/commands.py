"""Typed schemas of `voxfm shard`, `inspect`, `export`, `finetune` and the five benches, checked like pretrain's.

The defaults live in `conf/<command>.yaml` (and `conf/bench/*.yaml`); these dataclasses state each key's type and
bounds only. `validate_command` runs on the composed config before torch, Lightning or a data library is
imported: an unknown key (with a "did you mean"), a wrong type, a value out of range or not among the allowed
ones, and the settings still missing, all in one line, so a typo costs well under a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from voxfm.pretrain.config.schema import check_node
from voxfm.pretrain.config.targets import bounded
from voxfm.pretrain.errors import ConfigError

MISSING = "???"  # OmegaConf's mark of a required value not given

# These repeat tuples of modules that import numpy or torch; tests/cli/test_cli_validation.py keeps them equal.
Codec = Literal["lz4hc", "zstd"]  # voxfm.data.ingest.payload.CODECS
Frames = Literal["reject", "first", "all"]  # voxfm.data.ingest.preprocess.FRAMES
Layout = Literal["auto", "nnunet", "msd", "bids", "plain"]  # voxfm.data.ingest.layouts.LAYOUTS
Channels = Literal["separate", "first"]  # voxfm.data.ingest.layouts.CHANNELS
UnknownModality = Literal["reject", "keep"]  # voxfm.data.ingest.preprocess.UNKNOWN_MODALITY
ExportFormat = Literal["monai", "nnunet", "nnssl", "full"]  # pretrain.export.run.FORMATS
AttentionBackend = Literal["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]  # bench BACKENDS
PredictCard = Literal["h100", "h200"]  # voxfm.pretrain.bench.roofline.CARDS


@dataclass
class PreprocessSchema:
    spacing: list[float]
    ct_window: list[float]
    percentiles: list[float]
    max_voxels: int = field(**bounded(ge=1))
    max_mb: float = field(**bounded(gt=0.0))
    n_foreground_points: int = field(**bounded(ge=0))
    spacing_bounds: list[float]
    max_anisotropy: float = field(**bounded(ge=1.0))
    frames: Frames
    foreground_crop: bool
    crop_margin_mm: float = field(**bounded(ge=0.0))
    min_shape: int = field(**bounded(ge=1))
    keep_dicom_uids: bool


@dataclass
class ShardSchema:
    input: str
    output: str
    shard_max_mb: float = field(**bounded(gt=0.0))
    codec: Codec
    progress: bool
    workers: int = field(**bounded(ge=0))
    layout: Layout
    channels: Channels
    unknown_modality: UnknownModality
    dry_run: bool
    preprocess: PreprocessSchema


@dataclass
class InspectSchema:
    shards: str
    output: str | None
    n_samples: int = field(**bounded(ge=1))
    seed: int


@dataclass
class PlotSchema:
    run_dir: str | list[str]
    output: str | None


@dataclass
class ExportSchema:
    checkpoint: str
    output: str
    in_channels: int | None = field(**bounded(ge=1))
    format: ExportFormat
    overwrite: bool
    student: str | None


@dataclass
class FinetuneDataSchema:
    shards: str
    crop_size: list[int]
    val_fraction: float = field(**bounded(gt=0.0, lt=1.0))
    n_train: int | None = field(**bounded(ge=1))
    foreground_prob: float = field(**bounded(ge=0.0, le=1.0))
    batch_size: int = field(**bounded(ge=1))


@dataclass
class UnetrSchema:
    feature_size: int = field(**bounded(ge=1))
    norm_name: str


@dataclass
class FinetuneTrainerSchema:
    accelerator: Literal["auto", "cpu", "gpu", "cuda"]
    devices: int | str | list[int]
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "32", "bf16", None]
    checkpoint_every_n_steps: int = field(**bounded(ge=1))
    log_every_n_steps: int = field(**bounded(ge=1))
    progress_bar: bool


@dataclass
class FinetuneSchema:
    backbone: str
    model: Any  # a voxfm model config (its `_target_`'s schema applies)
    data: FinetuneDataSchema
    run_dir: str
    seed: int
    steps: int = field(**bounded(ge=1))
    lr: float = field(**bounded(gt=0.0))
    weight_decay: float = field(**bounded(ge=0.0))
    freeze_encoder: bool
    compare_scratch: bool
    sw_batch_size: int = field(**bounded(ge=1))
    sw_overlap: float = field(**bounded(ge=0.0, lt=1.0))
    unetr: UnetrSchema
    trainer: FinetuneTrainerSchema


@dataclass
class BenchDataSchema:
    shards: str
    max_samples: int = field(**bounded(ge=1))
    repeats: int = field(**bounded(ge=1))
    region_size: list[int]
    regions_per_volume: int = field(**bounded(ge=1))


@dataclass
class BenchIngestSchema:
    input: str
    max_volumes: int = field(**bounded(ge=1))
    repeats: int = field(**bounded(ge=1))
    spacing: list[float]


@dataclass
class BenchModelSchema:
    warmup: int = field(**bounded(ge=0))
    steps: int = field(**bounded(ge=1))
    profile: int = field(**bounded(ge=0))
    compile: bool
    predict: PredictCard | None
    gpus: int = field(**bounded(ge=1))
    kernels: bool


@dataclass
class BenchLoopSchema:
    shards: str
    warmup: int = field(**bounded(ge=1))
    steps: int = field(**bounded(ge=1))


@dataclass
class BenchAttentionSchema:
    shapes: dict  # name: [batch, heads, tokens, head_dim], checked by the bench
    warmup: int = field(**bounded(ge=0))
    steps: int = field(**bounded(ge=1))
    scale: float | None = field(**bounded(gt=0.0, le=1.0))
    backends: list[AttentionBackend] | None


SCHEMAS: dict[str, type] = {
    "shard": ShardSchema,
    "inspect": InspectSchema,
    "plot": PlotSchema,
    "export": ExportSchema,
    "finetune": FinetuneSchema,
    "bench/data": BenchDataSchema,
    "bench/ingest": BenchIngestSchema,
    "bench/model": BenchModelSchema,
    "bench/loop": BenchLoopSchema,
    "bench/attention": BenchAttentionSchema,
}


def validate_command(name: str, cfg: dict) -> None:
    """cfg: the resolved config of `voxfm <name>` as plain containers, `???` where a required value is missing.
    Raises one `ConfigError` line listing every problem."""
    schema = SCHEMAS[name]
    given = _without_missing(cfg)
    errors = _with_value_hints(check_node(given, schema, ""), given, schema, "")
    missing = _missing(cfg)
    errors += [f"{key}: missing from the config" for key in _absent(given, schema, "") if key not in missing]
    if missing:
        errors.append("missing required setting(s): " + ", ".join(f"{k}=..." for k in missing))
    if errors:
        raise ConfigError("; ".join(errors))


def _without_missing(node: dict) -> dict:
    return {k: _without_missing(v) if isinstance(v, dict) else v for k, v in node.items() if v != MISSING}


def _missing(node: dict, path: str = "") -> list[str]:
    found = []
    for key, value in node.items():
        where = f"{path}{key}"
        found += _missing(value, where + ".") if isinstance(value, dict) else [where] if value == MISSING else []
    return found


def _absent(node: dict, schema: type, path: str) -> list[str]:
    """Keys the schema declares that the config lacks (deleted with `~key`), nested schemas included."""
    hints, absent = typing.get_type_hints(schema), []
    for f in dataclasses.fields(schema):
        where = f"{path}{f.name}"
        if f.name not in node:
            absent.append(where)
        elif dataclasses.is_dataclass(hints[f.name]) and isinstance(node[f.name], dict):
            absent += _absent(node[f.name], hints[f.name], where + ".")
    return absent


def _with_value_hints(errors: list[str], node: dict, schema: type, path: str) -> list[str]:
    """ "did you mean" for a string close to one of a Literal's values (`format=nnunett`)."""
    hints = typing.get_type_hints(schema)
    for key, value in node.items():
        annotation, where = hints.get(key), f"{path}{key}"
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            errors = _with_value_hints(errors, value, annotation, where + ".")
        elif isinstance(value, str) and typing.get_origin(annotation) is Literal:
            allowed = [a for a in typing.get_args(annotation) if isinstance(a, str)]
            close, prefix = difflib.get_close_matches(value, allowed, n=1), f"{where}={value!r}:"
            errors = [
                f"{e} (did you mean {where}={close[0]}?)" if close and e.startswith(prefix) else e for e in errors
            ]
    return errors
