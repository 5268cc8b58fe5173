"""Typed schemas of every config group, checked before anything heavy is imported or built.

`voxfm pretrain` validates the composed config against these dataclasses first: an unknown key (with a
"did you mean"), a wrong type, an out-of-range value, a missing shard set or an impossible combination
fails in well under 2 seconds — before torch, Lightning, data, model or process group — with one line
per problem naming the key, the value and what is allowed. Schemas of `_target_` nodes are in
`pretrain/config/targets.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from voxfm.pretrain.config.declarations import read_declared
from voxfm.pretrain.config.targets import TARGETS, bounded, declared_schema
from voxfm.pretrain.errors import ConfigError


@dataclass
class DataSchema:
    shards: str | None
    sources: list[dict] | None
    resampled: bool
    crop_size: list[int]
    region_size: list[int] | None
    regions_per_volume: int = field(**bounded(ge=1))
    pool_gib: float = field(**bounded(ge=0.0))
    pool_volumes: int = field(**bounded(ge=1))
    device_pool_gib: float | None = field(**bounded(ge=0.0))
    device_pool_volumes: int = field(**bounded(ge=1))
    foreground_prob: float = field(**bounded(ge=0.0, le=1.0))
    shuffle_buffer: int = field(**bounded(ge=1))
    batch_size: int = field(**bounded(ge=1))
    num_workers: int = field(**bounded(ge=0))
    loader: Literal["thread", "process"]
    max_sample_mb: float = field(**bounded(gt=0.0))


@dataclass
class TrainerSchema:
    max_steps: int = field(**bounded(ge=1))
    accelerator: Literal["auto", "cpu", "gpu", "cuda"]
    devices: int | str | list[int]
    num_nodes: int = field(**bounded(ge=1))
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "32", "bf16", None]
    gradient_clip_val: float = field(**bounded(ge=0.0))
    accumulate_grad_batches: int = field(**bounded(ge=1))
    log_every_n_steps: int = field(**bounded(ge=1))
    checkpoint_every_n_steps: int = field(**bounded(ge=1))
    keep_last_n: int | None = field(**bounded(ge=1))
    keep_every_n_steps: int | None = field(**bounded(ge=1))
    progress_bar: bool
    images_every_n_steps: int = field(**bounded(ge=0))
    max_nonfinite_steps: int = field(**bounded(ge=1))
    compile: bool
    activation_checkpointing: bool
    peak_tflops: float | None = field(**bounded(gt=0.0))
    compile_mode: Literal["default", "max-autotune", "reduce-overhead"] = "default"
    fp8: bool = False


@dataclass
class StrategySchema:
    name: Literal["auto", "ddp", "ddp_spawn", "deepspeed"]
    stage: int = field(**bounded(ge=1, le=3))
    offload_optimizer: bool
    universal_checkpoint: bool


@dataclass
class OptimSchema:
    optimizer: Any
    warmup_steps: int = field(**bounded(ge=0))
    min_lr_factor: float = field(**bounded(ge=0.0, le=1.0))
    fused: bool | None
    lr_scaling: Literal["none", "linear", "sqrt"]
    reference_batch: int = field(**bounded(ge=1))
    layer_decay: float = field(**bounded(gt=0.0, le=1.0))
    weight_decay_end: float | None = field(**bounded(ge=0.0))
    freeze_last_layer_steps: int = field(**bounded(ge=0))


@dataclass
class WandbSchema:
    project: str
    name: str | None
    group: str | None
    tags: list[str]
    log_images: bool = False


@dataclass
class LoggerSchema:  # every key optional: logger=csv sets none, logger=[wandb,tensorboard] both
    wandb: WandbSchema | None = None
    tensorboard: bool = False


@dataclass
class ObjectiveSchema:
    loss: Any
    views: Any


@dataclass
class ProbeSchema:
    shards: str
    every_n_steps: int = field(**bounded(ge=1))
    steps: int = field(**bounded(ge=1))
    n_train: int | None = field(**bounded(ge=1))
    crop_size: list[int]
    batch_size: int = field(**bounded(ge=1))
    lr: float = field(**bounded(gt=0.0))
    val_fraction: float = field(**bounded(gt=0.0, lt=1.0))
    seed: int


@dataclass
class CollapseSchema:
    patience: int = field(**bounded(ge=1))
    stop: bool
    min_teacher_entropy: float
    min_teacher_information: float
    min_effective_rank: float
    max_gram_mean: float
    max_gram_std: float


@dataclass
class CallbacksSchema:
    probe: ProbeSchema | None
    collapse: CollapseSchema | None


@dataclass
class ResumeSchema:
    allow_changes: list[str]


@dataclass
class PretrainSchema:
    data: DataSchema
    model: Any
    objective: ObjectiveSchema
    optim: OptimSchema
    trainer: TrainerSchema
    strategy: StrategySchema
    logger: LoggerSchema
    run_dir: str
    seed: int
    init_from: str | None
    callbacks: CallbacksSchema
    resume: ResumeSchema
    experiment_name: str | None  # set by voxfm's compose from experiment=, for checkpoints and exports


HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _conforms(value, annotation) -> bool:
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is tuple:  # a config holds lists where a constructor says tuple
        if not isinstance(value, (list, tuple)):
            return False
        each = [args[0]] * len(value) if len(args) == 2 and args[1] is ... else args
        return not args or (len(each) == len(value) and all(map(_conforms, value, each)))
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    return isinstance(value, annotation)


def _allowed(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_allowed(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is ...):
        return f"a list of {_allowed(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_allowed(args[0])}" if args else "a list"
    if annotation is type(None):
        return "null"
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _range_error(value, bounds: dict) -> str | None:
    checks = {
        "ge": (lambda v, b: v >= b, ">="),
        "gt": (lambda v, b: v > b, ">"),
        "le": (lambda v, b: v <= b, "<="),
        "lt": (lambda v, b: v < b, "<"),
    }
    failed = [f"{sign} {bounds[k]}" for k, (ok, sign) in checks.items() if k in bounds and not ok(value, bounds[k])]
    return "expected a value " + " and ".join(failed) if failed else None


def check_node(node: dict, schema: type, path: str) -> list[str]:
    """Problems of one mapping against a schema (recursing into nested schemas and `_target_` nodes)."""
    errors: list[str] = []
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if key in HYDRA_KEYS:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {path + '.' if path else ''}{close[0]}?" if close else ""
            errors.append(f"{where}: unknown key{hint} (allowed: {', '.join(fields)})")
            continue
        annotation = hints[key]
        if not _conforms(value, annotation):
            errors.append(f"{where}={value!r}: expected {_allowed(annotation)}")
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = _range_error(value, fields[key].metadata)
            if problem:
                errors.append(f"{where}={value!r}: {problem}")
        if isinstance(value, dict):
            errors += check_value(value, annotation, where)
    return errors


def check_value(value: dict, annotation, path: str) -> list[str]:
    if "_target_" in value:
        target = value["_target_"]
        if target in TARGETS:
            return check_node(value, TARGETS[target], path)
        try:
            declared = read_declared(target) if isinstance(target, str) else None
        except ValueError as err:
            return [f"{path}._target_={target!r}: {err}"]
        if declared is None:
            return [
                f"{path}._target_={target!r}: unknown; known targets: {', '.join(sorted(TARGETS))}, or an "
                "objective or backbone class with a `declaration`"
            ]
        return check_node(value, declared_schema(declared), path)
    nested = [a for a in (annotation, *typing.get_args(annotation)) if dataclasses.is_dataclass(a)]
    if nested:
        return check_node(value, nested[0], path)
    if not any(isinstance(v, dict) and "_target_" in v for v in value.values()):
        return []
    errors = []  # named nodes (objective=distill's students): each one a node of its own
    for key, node in value.items():
        if isinstance(node, dict) and "_target_" in node:
            errors += check_value(node, Any, f"{path}.{key}")
        else:
            errors.append(f"{path}.{key}={node!r}: expected a node with a _target_ (e.g. a model config)")
    return errors


def validate_pretrain(cfg: dict) -> None:
    """cfg: the resolved `voxfm pretrain` config as plain containers. Raises ValueError, one line per problem."""
    errors = check_node(cfg, PretrainSchema, "")
    missing = [f.name for f in dataclasses.fields(PretrainSchema) if f.name not in cfg]
    errors += [f"{name}: missing" for name in missing]
    if not errors:
        from voxfm.pretrain.config.checks import combination_errors  # numpy (data.crops): only `pretrain` needs it

        errors = combination_errors(cfg, visible_gpus())
    if errors:
        raise ConfigError(
            "invalid configuration: " + errors[0]
            if len(errors) == 1
            else "invalid configuration:\n  " + "\n  ".join(errors)
        )


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, read without importing torch (driver's /proc entries, CUDA_VISIBLE_DEVICES)."""
    gpus = len(os.listdir("/proc/driver/nvidia/gpus")) if os.path.isdir("/proc/driver/nvidia/gpus") else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return gpus
