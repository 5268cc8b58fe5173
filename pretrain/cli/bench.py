"""`voxfm bench data|model|ingest|attention`: each bench composes `conf/bench/<name>.yaml`, checked against its
schema (`pretrain.config.commands`) before the bench module (and torch) is imported."""

from __future__ import annotations

import dataclasses
import json

from omegaconf import DictConfig

from pretrain.cli.compose import compose_config, composed_or_shown, resolved
from pretrain.config.commands import BenchModelSchema, validate_command
from pretrain.errors import ConfigError

BENCH_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(BenchModelSchema))  # the rest shape the experiment


def checked(name: str, overrides: list[str]) -> DictConfig | None:
    """`conf/<name>.yaml` composed and validated; None after `--cfg` printed it."""
    cfg = composed_or_shown(name, overrides)
    if cfg is not None:
        validate_command(name, resolved(cfg))
    return cfg


def experiment_of(overrides: list[str]) -> tuple[str | None, list[str]]:
    """(the last `experiment=` value or None, the other overrides)."""
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    return (named[-1] if named else None), [o for o in overrides if not o.startswith("experiment=")]


def bench_ingest(overrides: list[str]) -> None:
    cfg = checked("bench/ingest", overrides)
    if cfg is None:
        return
    from pretrain.bench.ingest import bench_ingest, format_ingest_bench

    result = bench_ingest(cfg.input, cfg.max_volumes, cfg.repeats, list(cfg.spacing))
    print(json.dumps(result))
    print(format_ingest_bench(result))


def bench_data(overrides: list[str]) -> None:
    """`experiment=<name>` (optional) takes the region size and regions per volume from that experiment; the other
    overrides go to conf/bench/data.yaml."""
    experiment, overrides = experiment_of(overrides)
    cfg = checked("bench/data", overrides)
    if cfg is None:
        return
    region_size, per_volume = list(cfg.region_size), cfg.regions_per_volume
    if experiment:  # the regions that experiment's workers cut
        exp = compose_config("pretrain", [f"experiment={experiment}", f"data.shards={cfg.shards}", "run_dir=unused"])
        from hydra.utils import instantiate

        region_size = list(exp.data.region_size or instantiate(exp.objective.views).region_size_needed())
        per_volume = exp.data.regions_per_volume
    from pretrain.bench.data import bench_data, format_data_bench

    result = bench_data(cfg.shards, cfg.max_samples, cfg.repeats, region_size, per_volume)
    print(json.dumps({"experiment": experiment, **result}))
    print(format_data_bench(result))


def bench_model(overrides: list[str]) -> None:
    """`warmup`/`steps`/`profile`/`compile` go to conf/bench/model.yaml; `experiment=` and every other override
    shape the experiment's pretrain config."""
    experiment, _ = experiment_of(overrides)
    if experiment is None:
        raise ConfigError("missing required setting(s): experiment=... (e.g. experiment=demo)")
    cfg = checked("bench/model", [o for o in overrides if o.split("=", 1)[0] in (*BENCH_MODEL_KEYS, "--cfg")])
    if cfg is None:
        return
    rest = [o for o in overrides if o.split("=", 1)[0] not in BENCH_MODEL_KEYS]
    pretrain = compose_config("pretrain", ["data.shards=unused", "run_dir=unused", *rest])
    from pretrain.bench.model import bench_model, format_model_bench

    result = bench_model(pretrain, cfg.warmup, cfg.steps, cfg.profile, cfg.compile)
    table = result.pop("profile", None)
    print(json.dumps({"experiment": experiment, **result}))
    print(format_model_bench(result, experiment))
    if table:
        print(table)


def bench_attention(overrides: list[str]) -> None:
    cfg = checked("bench/attention", overrides)
    if cfg is None:
        return
    from pretrain.bench.attention import bench_attention, format_attention_bench

    result = bench_attention(dict(cfg.shapes), cfg.warmup, cfg.steps, cfg.scale, cfg.backends)
    print(json.dumps(result))
    print(format_attention_bench(result))


BENCHES = {"data": bench_data, "model": bench_model, "ingest": bench_ingest, "attention": bench_attention}
