"""`voxfm bench data|model|loop|ingest|attention`: each bench composes `conf/bench/<name>.yaml`, checked against its
schema (`pretrain.config.commands`) before the bench module (and torch) is imported."""

from __future__ import annotations

import dataclasses
import json
import tempfile

from omegaconf import DictConfig

from voxfm.pretrain.cli.compose import checked_config, compose_config, missing_keys
from voxfm.pretrain.config.commands import BenchLoopSchema, BenchModelSchema
from voxfm.pretrain.errors import ConfigError

# the keys of conf/bench/<name>.yaml; the other overrides shape the experiment
BENCH_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(BenchModelSchema))
BENCH_LOOP_KEYS = tuple(f.name for f in dataclasses.fields(BenchLoopSchema))


def experiment_of(overrides: list[str]) -> tuple[str | None, list[str]]:
    """(the last `experiment=` value or None, the other overrides)."""
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    return (named[-1] if named else None), [o for o in overrides if not o.startswith("experiment=")]


def checked_bench(name: str, keys: tuple[str, ...], overrides: list[str]) -> tuple[str, DictConfig | None, list[str]]:
    """→ (experiment, `conf/<name>.yaml` checked with the overrides of its `keys` (None after `--cfg` printed it),
    the other overrides, `experiment=` included): for the benches that run an experiment."""
    experiment, _ = experiment_of(overrides)
    if experiment is None:
        raise ConfigError("missing required setting(s): experiment=... (e.g. experiment=demo)")
    cfg = checked_config(name, [o for o in overrides if o.split("=", 1)[0] in (*keys, "--cfg")])
    return experiment, cfg, [o for o in overrides if o.split("=", 1)[0] not in keys]


def bench_ingest(overrides: list[str]) -> None:
    cfg = checked_config("bench/ingest", overrides)
    if cfg is None:
        return
    from voxfm.pretrain.bench.ingest import bench_ingest, format_ingest_bench

    result = bench_ingest(cfg.input, cfg.max_volumes, cfg.repeats, list(cfg.spacing))
    print(json.dumps(result))
    print(format_ingest_bench(result))


def bench_data(overrides: list[str]) -> None:
    """`experiment=<name>` (optional) takes the region size and regions per volume from that experiment; the other
    overrides go to conf/bench/data.yaml."""
    experiment, overrides = experiment_of(overrides)
    cfg = checked_config("bench/data", overrides)
    if cfg is None:
        return
    region_size, per_volume = list(cfg.region_size), cfg.regions_per_volume
    if experiment:  # the regions that experiment's workers cut
        exp = compose_config("pretrain", [f"experiment={experiment}", f"data.shards={cfg.shards}", "run_dir=unused"])
        from hydra.utils import instantiate

        region_size = list(exp.data.region_size or instantiate(exp.objective.views).region_size_needed())
        per_volume = exp.data.regions_per_volume
    from voxfm.pretrain.bench.data import bench_data, format_data_bench

    result = bench_data(cfg.shards, cfg.max_samples, cfg.repeats, region_size, per_volume)
    print(json.dumps({"experiment": experiment, **result}))
    print(format_data_bench(result))


def bench_model(overrides: list[str]) -> None:
    """`warmup`/`steps`/`profile`/`compile`/`predict`/`gpus`/`kernels` go to conf/bench/model.yaml; `experiment=`
    and every other override shape the experiment's pretrain config. `predict=<card>` counts the step on the CPU and
    predicts that card's time (`pretrain/bench/predict.py`) instead of timing it; `kernels=true` counts what the
    compiled step launches (`pretrain/bench/kernels.py`)."""
    experiment, cfg, rest = checked_bench("bench/model", BENCH_MODEL_KEYS, overrides)
    if cfg is None:
        return
    from voxfm.pretrain.runtime.quiet import quiet_start

    if cfg.predict is not None and cfg.kernels:
        raise ConfigError(f"predict={cfg.predict} and kernels=true: one at a time (each is a bench of its own)")
    quiet_start()  # known third-party noise, as a run filters it (inductor's CPU notes among it)
    pretrain = compose_config("pretrain", ["data.shards=unused", "run_dir=unused", *rest])
    if cfg.predict is not None:
        from voxfm.pretrain.bench.predict import format_prediction, predict

        result = predict(pretrain, cfg.predict, cfg.gpus)
        print(json.dumps({"experiment": experiment, **result}))
        print(format_prediction(result, experiment))
        return
    missing = missing_keys(pretrain)  # e.g. objective=distill's teacher: its format=full export
    if missing:
        raise ConfigError("missing required setting(s): " + ", ".join(f"{k}=..." for k in missing))
    if cfg.kernels:
        from voxfm.pretrain.bench.kernels import count_kernels, format_kernels

        result = count_kernels(pretrain, steps=cfg.steps)
        print(json.dumps({"experiment": experiment, **result}))
        print(format_kernels(result, experiment))
        return
    from voxfm.pretrain.bench.model import bench_model, format_model_bench

    result = bench_model(pretrain, cfg.warmup, cfg.steps, cfg.profile, cfg.compile)
    table = result.pop("profile", None)
    print(json.dumps({"experiment": experiment, **result}))
    print(format_model_bench(result, experiment))
    if table:
        print(table)


def bench_loop(overrides: list[str]) -> None:
    """`shards`/`warmup`/`steps` go to conf/bench/loop.yaml; `experiment=` and every other override shape the
    experiment's pretrain config, checked as `voxfm pretrain` checks it (one device, no progress bar unless asked,
    a scratch run_dir)."""
    experiment, cfg, rest = checked_bench("bench/loop", BENCH_LOOP_KEYS, overrides)
    if cfg is None:
        return
    with tempfile.TemporaryDirectory(prefix="voxfm-bench-loop-") as run_dir:
        pretrain = checked_config(
            "pretrain",
            [
                "trainer.progress_bar=false",
                *rest,
                f"data.shards={cfg.shards}",
                f"run_dir={run_dir}",
                "trainer.devices=1",
                "trainer.num_nodes=1",
            ],
        )
        if pretrain.trainer.max_steps < cfg.warmup + cfg.steps:
            raise ConfigError(
                f"trainer.max_steps={pretrain.trainer.max_steps}: the bench runs warmup + steps = "
                f"{cfg.warmup + cfg.steps} steps; raise trainer.max_steps or lower steps"
            )
        from voxfm.pretrain.bench.loop import bench_loop, format_loop_bench

        result = bench_loop(pretrain, cfg.warmup, cfg.steps)
    print(json.dumps({"experiment": experiment, **result}))
    print(format_loop_bench(result, experiment))


def bench_attention(overrides: list[str]) -> None:
    cfg = checked_config("bench/attention", overrides)
    if cfg is None:
        return
    from voxfm.pretrain.bench.attention import bench_attention, format_attention_bench

    result = bench_attention(dict(cfg.shapes), cfg.warmup, cfg.steps, cfg.scale, cfg.backends)
    print(json.dumps(result))
    print(format_attention_bench(result))


BENCHES = {
    "data": bench_data,
    "model": bench_model,
    "loop": bench_loop,
    "ingest": bench_ingest,
    "attention": bench_attention,
}
