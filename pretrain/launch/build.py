"""The builders of a `voxfm pretrain` run, each from its part of the config: the module (backbone, objective,
views, speed-ups), the trainer with voxfm's callbacks, the region stream and its loader. `launch.run` assembles a
run from them; `voxfm bench loop` and the Python API build the same pieces."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from voxfm.data.ingest.safe_files import append_line
from voxfm.data.ingest.shard_set import describe_shard_set
from voxfm.data.stream.loader import ThreadLoader
from voxfm.data.stream.regions import RegionStream, region_loader
from voxfm.pretrain.callbacks.checkpointing import ConfigInCheckpoint, FinalCheckpoint
from voxfm.pretrain.callbacks.efficiency import Efficiency
from voxfm.pretrain.callbacks.features import FeaturePictures
from voxfm.pretrain.callbacks.feed_state import FeedState, saved_feed
from voxfm.pretrain.callbacks.images import ReconstructionImages
from voxfm.pretrain.callbacks.monitoring import DataStats, ProgressBar, Throughput
from voxfm.pretrain.callbacks.preemption import Preemption
from voxfm.pretrain.callbacks.retention import Retention
from voxfm.pretrain.callbacks.teardown import ShutDownProcessGroup
from voxfm.pretrain.errors import ConfigError, config_errors
from voxfm.pretrain.launch.device_budget import device_pool_budget
from voxfm.pretrain.runtime.curves import MetricCurves
from voxfm.pretrain.runtime.loggers import tensorboard_logger, wandb_logger
from voxfm.pretrain.runtime.metrics_csv import RunCSVLogger
from voxfm.pretrain.training.checkpoint_io import AtomicCheckpointIO
from voxfm.pretrain.training.module import PretrainModule
from voxfm.pretrain.training.precision import plugin_for
from voxfm.pretrain.training.speedups import compile_mode, objective_blocks, parallelize, report_blocks
from voxfm.pretrain.training.strategy import build_strategy


def log_event(run_dir: Path, **event) -> None:
    """One JSON line per start / resume / preempted / end in <run_dir>/events.jsonl: the run's history at a glance.
    A checkpoint is named relative to run_dir (an init_from export by its folder name): no absolute path, so the
    run_dir can be shared."""
    if isinstance(event.get("checkpoint"), str):
        path, root = Path(event["checkpoint"]).resolve(), Path(run_dir).resolve()
        event["checkpoint"] = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    append_line(run_dir / "events.jsonl", json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}))


def first_shard_set(data: DictConfig) -> str:
    return data.shards or data.sources[0].shards


def source_names(data: DictConfig) -> list[str]:
    from voxfm.data.stream.sources import parse_sources

    sources = OmegaConf.to_container(data.sources) if data.sources else None
    return [s.name for s in parse_sources(data.shards, sources)]


def collapse_callback(cfg: DictConfig, run_dir: Path) -> list:
    collapse = cfg.get("callbacks", {}).get("collapse")
    if not collapse:
        return []
    from voxfm.pretrain.callbacks.collapse import CollapseAlarm

    return [CollapseAlarm(**OmegaConf.to_container(collapse), on_event=partial(log_event, run_dir))]


def probe_callback(cfg: DictConfig) -> list:
    probe = cfg.get("callbacks", {}).get("probe")
    if not probe:
        return []
    from voxfm.pretrain.callbacks.probe import Probe

    return [Probe(**OmegaConf.to_container(probe))]


def trainer_precision(cfg: DictConfig) -> str:
    return cfg.trainer.precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true")


def half_precision_weights(cfg: DictConfig) -> bool:
    """DeepSpeed under bf16/fp16 keeps the module's parameters in that precision (DDP keeps fp32 under autocast)."""
    return str(cfg.strategy.name).startswith("deepspeed") and trainer_precision(cfg).startswith(("bf16", "16"))


def build_module(cfg: DictConfig) -> PretrainModule:
    """Backbone from `model`, objective (completed with the backbone's spec) and device-side views from
    `objective.views`. A constructor's ValueError is about the config it was given: a ConfigError."""
    with config_errors():
        views = instantiate(cfg.objective.views)  # first: cheap, and its checks fail before a model is built
        if cfg.data.region_size is not None:
            views.check_region(cfg.data.region_size)
        backbone = instantiate(cfg.model)
        loss = instantiate(cfg.objective.loss)
        if isinstance(loss.keywords.get("teacher"), str):  # objective=distill: its frozen teacher, read here
            from voxfm.pretrain.launch.teacher import load_teacher

            loss.keywords["teacher"] = load_teacher(loss.keywords["teacher"])
        objective = loss(backbone.spec)
    others = getattr(objective, "extra_backbones", list)()  # objective=distill's other students
    depths = {len(b.repeated_blocks()) for b in (backbone, *others)}
    if others and cfg.optim.layer_decay != 1.0 and len(depths) > 1:  # refused now, not inside the fit
        raise ConfigError(
            f"optim.layer_decay={cfg.optim.layer_decay}: the students have {sorted(depths)} blocks; layer-wise decay "
            "needs one depth for all students (or optim.layer_decay=1)"
        )
    if not objective.declaration.trains_decoder and backbone.declaration.decoder:
        backbone.freeze_decoder()  # unused by the loss: frozen, so DDP needs no unused-parameter search
    if objective.declaration.teacher:  # a copy of the plain student, before speed-ups wrap its blocks
        objective.attach_teacher(backbone, half_precision_weights=half_precision_weights(cfg))
    mode = compile_mode(cfg.trainer.compile, OmegaConf.to_container(cfg.strategy))
    with config_errors():  # fp8 on a GPU that has none
        for network in (backbone, *others):
            parallelize(network, cfg.trainer.activation_checkpointing, mode, fp8=cfg.trainer.get("fp8", False))
    if mode == "blocks":  # the objective's own blocks (the MAE decoder's) too; the views compile in the module
        compiled_blocks = objective_blocks(objective)
        report_blocks(sum(len(n.repeated_blocks()) for n in (backbone, *others)), len(compiled_blocks))
    optim = cfg.optim
    with config_errors():  # e.g. optim.freeze_last_layer_steps without a `last_layer` to hold
        module = PretrainModule(
            backbone=backbone,
            objective=objective,
            view_pipeline=views,
            optimizer=instantiate(optim.optimizer),
            warmup_steps=optim.warmup_steps,
            total_steps=cfg.trainer.max_steps,
            min_lr_factor=optim.min_lr_factor,
            seed=cfg.seed,
            fused=optim.fused,
            max_nonfinite_steps=cfg.trainer.max_nonfinite_steps,
            compile_step=mode == "step",
            compile_views=mode is not None,  # "blocks" too: the views hold no parameters for ZeRO-3 to gather
            layer_decay=optim.layer_decay,
            weight_decay_end=optim.weight_decay_end,
            freeze_last_layer_steps=optim.freeze_last_layer_steps,
        )
    module.compiled.mode = cfg.trainer.get("compile_mode", "default")  # torch.compile's mode for the whole step
    return module


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    config: dict,
    on_gpu: bool,
    preemption: Preemption | None = None,
    load_universal: bool = False,
    resume_step: int = 0,
) -> L.Trainer:
    """`on_gpu`: `trains_on_gpu(cfg.trainer)`, derived once by the caller (it also decides the loader's pinning);
    `resume_step`: the step a resumed run starts at (its loggers continue the run's record from there)."""
    t = cfg.trainer
    precision = trainer_precision(cfg)
    # flushed at every logging step, so a killed run loses no metrics it had logged
    loggers = [RunCSVLogger(str(run_dir), resume_step, flush_logs_every_n_steps=t.log_every_n_steps)]
    wandb, wandb_images = None, bool((cfg.logger.get("wandb") or {}).get("log_images"))
    if cfg.logger.get("wandb") is not None:
        wandb = wandb_logger(run_dir, config, dict(cfg.logger.wandb))
        loggers.append(wandb)
    if cfg.logger.get("tensorboard"):
        loggers.append(tensorboard_logger(run_dir))
    checkpoints = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=-1,
        save_last=True,
        enable_version_counter=False,  # one job per run_dir (its lock): never a `last-v1.ckpt` beside last.ckpt
    )
    plugins = [AtomicCheckpointIO()]
    plugin = plugin_for(precision, deepspeed=cfg.strategy.name == "deepspeed")
    if plugin is not None:  # Lightning takes the precision from the plugin then (both at once is refused)
        plugins.append(plugin)
    if SLURMEnvironment.detect():  # voxfm's Preemption callback checkpoints and requeues, not Lightning's
        plugins.append(SLURMEnvironment(auto_requeue=False))
    if on_gpu:  # a pretraining run's shapes never change: cuDNN picks its fastest convolutions once
        torch.backends.cudnn.benchmark = True
    # the bar reads its metrics' values (a host sync) when it refreshes: at logging steps only
    bar = [ProgressBar(t.log_every_n_steps, t.accumulate_grad_batches)] if t.progress_bar else []
    return L.Trainer(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(OmegaConf.to_container(cfg.strategy), on_gpu, load_universal),
        precision=None if plugin is not None else precision,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        logger=loggers,
        callbacks=[
            checkpoints,
            LearningRateMonitor("step"),
            Throughput(),
            ConfigInCheckpoint(config, describe_shard_set(first_shard_set(cfg.data))),
            DataStats(source_names(cfg.data)),
            FeedState(),
            ReconstructionImages(run_dir / "images", t.images_every_n_steps, wandb if wandb_images else None),
            FeaturePictures(run_dir / "images", t.images_every_n_steps, wandb if wandb_images else None),
            MetricCurves(run_dir),
            *([preemption] if preemption is not None else []),
            FinalCheckpoint(run_dir / "checkpoints"),
            Efficiency(t.peak_tflops),
            *probe_callback(cfg),
            *collapse_callback(cfg, run_dir),
            ShutDownProcessGroup(),
            *bar,
            Retention(run_dir / "checkpoints", t.keep_last_n, t.keep_every_n_steps, t.checkpoint_every_n_steps),
        ],
        plugins=plugins,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,  # voxfm prints one line instead (runtime/quiet.py model_line)
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
    )


def build_stream(data: DictConfig, region_size, seed: int, device_pool: bool = False) -> RegionStream:
    """The region stream `data` describes; `seed` already includes the resume step; `device_pool`: its volumes go
    to a device pool (`build_loader`)."""
    return RegionStream(
        data.shards,
        region_size,
        data.regions_per_volume,
        data.foreground_prob,
        data.shuffle_buffer,
        seed=seed,
        sources=OmegaConf.to_container(data.sources) if data.sources else None,
        resampled=data.resampled,
        max_sample_mb=data.max_sample_mb,
        pool_gib=data.pool_gib,
        pool_volumes=data.pool_volumes,
        group=data.batch_size,
        device_pool_volumes=data.device_pool_volumes if device_pool else None,
    )


def build_feed(data: DictConfig, region_size, seed: int, on_gpu: bool):
    """The stream and loader `voxfm pretrain` trains from (`build_stream` + `build_loader`), device pool included."""
    device_pool = bool(device_pool_budget(data, on_gpu))
    return build_loader(build_stream(data, region_size, seed, device_pool=device_pool), data, on_gpu)


def trains_on_gpu(trainer: DictConfig) -> bool:
    """The one test of whether a run trains on a GPU: `trainer.accelerator` says so, or is `auto` with one visible."""
    return trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())


def replayable(record, data: DictConfig, world_size: int) -> tuple[dict[int, dict] | None, str]:
    """A checkpoint's device-pool record checked against this run's stream (`saved_feed`): (rank → state, "") or
    (None, why it cannot replay)."""
    from voxfm.data.stream.pool_state import stream_signature
    from voxfm.data.stream.sources import parse_sources

    sources = parse_sources(data.shards, OmegaConf.to_container(data.sources) if data.sources else None)
    signature = stream_signature(sources, data.resampled)
    max_reread = 4 * data.device_pool_volumes + 64  # a pool's worth and its spent neighbours, with room
    return saved_feed(record, world_size, data.num_workers, signature, len(sources), data.resampled, max_reread)


def build_loader(
    stream: RegionStream,
    data: DictConfig,
    on_gpu: bool,
    replay: dict[int, dict] | None = None,
    pool_bytes: float | None = None,
):
    """`on_gpu`: the thread loader hands over device batches (pinned buffers, copies one batch ahead). With a device
    pool (`data.device_pool_gib`, `device_pool_budget`) the regions are cut on the training device instead, and
    `replay` (rank → the pool's saved state, `pretrain/callbacks/feed_state.py`) makes it go on where it stopped."""
    budget = device_pool_budget(data, on_gpu) if pool_bytes is None else pool_bytes  # the run's, decided once
    if budget:
        from voxfm.data.stream.device_pool import DevicePoolLoader

        device = torch.device("cuda" if on_gpu else "cpu")  # which GPU: the rank's, once training has set it
        return DevicePoolLoader(stream, data.batch_size, data.num_workers, device, budget, resume=replay)
    if data.loader == "thread":
        return ThreadLoader(stream, data.batch_size, data.num_workers, pin_memory=on_gpu)
    if data.loader == "process":
        return region_loader(stream, data.batch_size, data.num_workers)
    raise ConfigError(f"data.loader={data.loader!r}; allowed: 'thread', 'process'")
