"""`voxfm pretrain`: build data, backbone and objective from the config, train, resume automatically."""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from voxfm.data.ingest.locks import folder_lock
from voxfm.data.ingest.shard_set import describe_shard_set
from voxfm.data.stream.device_feed import buffer_count
from voxfm.data.stream.loader import QUEUED_PER_WORKER, ThreadLoader
from voxfm.data.stream.pool import memory_line
from voxfm.data.stream.regions import RegionStream, region_loader
from voxfm.pretrain.callbacks.checkpointing import ConfigInCheckpoint, FinalCheckpoint
from voxfm.pretrain.callbacks.efficiency import Efficiency
from voxfm.pretrain.callbacks.images import ReconstructionImages
from voxfm.pretrain.callbacks.monitoring import DataStats, ProgressBar, Throughput
from voxfm.pretrain.callbacks.preemption import Preemption
from voxfm.pretrain.callbacks.retention import Retention
from voxfm.pretrain.callbacks.teardown import ShutDownProcessGroup, shut_down_process_group
from voxfm.pretrain.config.renamed import renamed_key, upgraded
from voxfm.pretrain.config.schema import validate_pretrain
from voxfm.pretrain.errors import ConfigError, config_errors
from voxfm.pretrain.training.checkpoint_io import AtomicCheckpointIO
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint, is_deepspeed_checkpoint, load_checkpoint
from voxfm.pretrain.training.init_from import ContinueFromStep, init_module
from voxfm.pretrain.training.module import PretrainModule
from voxfm.pretrain.training.resume_check import check_resume_config
from voxfm.pretrain.training.schedule import lr_scale
from voxfm.pretrain.training.speedups import compile_mode, parallelize
from voxfm.pretrain.training.strategy import build_strategy, universal_checkpoint


def log_event(run_dir: Path, **event) -> None:
    """One JSON line per start / resume / preempted / end in <run_dir>/events.jsonl: the run's history at a glance."""
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}) + "\n")


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
        objective = instantiate(cfg.objective.loss)(backbone.spec)
    if not objective.declaration.trains_decoder and backbone.declaration.decoder:
        backbone.freeze_decoder()  # unused by the loss: frozen, so DDP needs no unused-parameter search
    if objective.declaration.teacher:  # a copy of the plain student, before speed-ups wrap its blocks
        objective.attach_teacher(backbone, half_precision_weights=half_precision_weights(cfg))
    mode = compile_mode(cfg.trainer.compile, OmegaConf.to_container(cfg.strategy))
    parallelize(backbone, cfg.trainer.activation_checkpointing, mode)
    optim = cfg.optim
    with config_errors():  # e.g. optim.freeze_last_layer_steps without a `last_layer` to hold
        return PretrainModule(
            backbone=backbone, objective=objective, view_pipeline=views,
            optimizer=instantiate(optim.optimizer), warmup_steps=optim.warmup_steps,
            total_steps=cfg.trainer.max_steps, min_lr_factor=optim.min_lr_factor, seed=cfg.seed, fused=optim.fused,
            max_nonfinite_steps=cfg.trainer.max_nonfinite_steps, compile_step=mode == "step",
            layer_decay=optim.layer_decay, weight_decay_end=optim.weight_decay_end,
            freeze_last_layer_steps=optim.freeze_last_layer_steps,
        )


def build_trainer(cfg: DictConfig, run_dir: Path, config: dict, preemption: Preemption | None = None,
                  load_universal: bool = False) -> L.Trainer:
    t = cfg.trainer
    precision = trainer_precision(cfg)
    # flushed at every logging step, so a killed run loses no metrics it had logged
    loggers = [CSVLogger(save_dir=str(run_dir), name="metrics", flush_logs_every_n_steps=t.log_every_n_steps)]
    wandb = None
    if cfg.logger.wandb is not None:
        wandb = WandbLogger(save_dir=str(run_dir), config=config, **cfg.logger.wandb)
        loggers.append(wandb)
    checkpoints = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"), filename="step{step:06d}", auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps, save_top_k=-1, save_last=True,
        enable_version_counter=False,  # one job per run_dir (its lock): never a `last-v1.ckpt` beside last.ckpt
    )
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # voxfm's Preemption callback checkpoints and requeues, not Lightning's
        plugins.append(SLURMEnvironment(auto_requeue=False))
    on_gpu = trains_on_gpu(t)
    if on_gpu:  # a pretraining run's shapes never change: cuDNN picks its fastest convolutions once
        torch.backends.cudnn.benchmark = True
    # the bar reads its metrics' values (a host sync) when it refreshes: at logging steps only
    bar = [ProgressBar(t.log_every_n_steps, t.accumulate_grad_batches)] if t.progress_bar else []
    return L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=build_strategy(OmegaConf.to_container(cfg.strategy), on_gpu, load_universal),
        precision=precision, gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches, log_every_n_steps=t.log_every_n_steps,
        logger=loggers, callbacks=[checkpoints, LearningRateMonitor("step"), Throughput(),
                                   ConfigInCheckpoint(config, describe_shard_set(first_shard_set(cfg.data))),
                                   DataStats(source_names(cfg.data)),
                                   ReconstructionImages(run_dir / "images", t.images_every_n_steps, wandb),
                                   *([preemption] if preemption is not None else []),
                                   FinalCheckpoint(run_dir / "checkpoints"), Efficiency(t.peak_tflops),
                                   *probe_callback(cfg), *collapse_callback(cfg, run_dir), ShutDownProcessGroup(),
                                   *bar,
                                   Retention(run_dir / "checkpoints", t.keep_last_n, t.keep_every_n_steps,
                                             t.checkpoint_every_n_steps)],
        plugins=plugins, enable_progress_bar=t.progress_bar, enable_model_summary=True,
        default_root_dir=str(run_dir), use_distributed_sampler=False,
    )


def launcher_rank() -> int:
    """This process's global rank as torchrun or SLURM announce it (0 for a single process or Lightning's launcher)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def is_job_owner() -> bool:
    """The one process per job that locks run_dir and writes config.yaml: global rank 0 under torchrun or SLURM,
    else Lightning's launcher on node 0 (the ranks it starts carry LOCAL_RANK > 0, other nodes NODE_RANK > 0)."""
    local, node = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("NODE_RANK", 0))
    return launcher_rank() == 0 and local == 0 and node == 0


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """run_dir/config.yaml = this run's config; an earlier, different one is kept as config.<its mtime>.yaml."""
    path, text = run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True)
    if path.exists() and path.read_text() != text:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(path.stat().st_mtime))
        path.rename(run_dir / f"config.{stamp}.yaml")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_stream(data: DictConfig, region_size, seed: int) -> RegionStream:
    """The region stream `data` describes; `seed` already includes the resume step."""
    return RegionStream(data.shards, region_size, data.regions_per_volume, data.foreground_prob, data.shuffle_buffer,
                        seed=seed, sources=OmegaConf.to_container(data.sources) if data.sources else None,
                        resampled=data.resampled, max_sample_mb=data.max_sample_mb, pool_gib=data.pool_gib,
                        pool_volumes=data.pool_volumes, group=data.batch_size)


def trains_on_gpu(trainer: DictConfig) -> bool:
    return trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())


def build_loader(stream: RegionStream, data: DictConfig, on_gpu: bool):
    """`on_gpu`: the thread loader hands over device batches (pinned buffers, copies one batch ahead)."""
    if data.loader == "thread":
        return ThreadLoader(stream, data.batch_size, data.num_workers, pin_memory=on_gpu)
    if data.loader == "process":
        return region_loader(stream, data.batch_size, data.num_workers)
    raise ConfigError(f"data.loader={data.loader!r}; allowed: 'thread', 'process'")


def run_pretrain(cfg: DictConfig, validated: bool = False) -> Path:
    """Train until `trainer.max_steps`; returns the final checkpoint. Same run_dir again = resume. One job per
    run_dir: a second one raises `FolderLocked` (exit 2) naming the holder. `validated=True`: the caller (the CLI)
    has already run `validate_pretrain` on this cfg."""
    if not validated:
        validate_pretrain(OmegaConf.to_container(cfg, resolve=True))
    # torchrun / SLURM / Lightning's DDP launcher start every rank here; one holds the lock for the whole job
    with folder_lock(cfg.run_dir, "run_dir") if is_job_owner() else nullcontext():
        return _train(cfg, Path(cfg.run_dir))


def _train(cfg: DictConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume, resume_step = find_resume_checkpoint(run_dir / "checkpoints")
    changes = {}
    if resume is not None:  # every rank checks (each must stop); nothing is written before this passes
        stored = load_checkpoint(resume, mmap=True).get("voxfm_config")
        if stored is not None:
            allowed = [renamed_key(k) for k in cfg.resume.allow_changes]
            changes = check_resume_config(upgraded(stored), config, allowed, resume)
    if is_job_owner():
        write_config(run_dir, cfg)
    L.seed_everything(cfg.seed + resume_step, workers=True, verbose=False)
    module = build_module(cfg)
    if cfg.init_from and resume is None:  # a new run seeded by a format=full export: its weights and step
        resume_step = init_module(module, cfg.init_from, cfg.trainer.max_steps)
        L.seed_everything(cfg.seed + resume_step, workers=True, verbose=False)
    # A resumed run draws fresh regions (seeded by the resume step) rather than replaying the first ones.
    region_size = cfg.data.region_size or module.view_pipeline.region_size_needed()
    stream = build_stream(cfg.data, region_size, seed=cfg.seed + resume_step)
    universal = bool(resume and is_deepspeed_checkpoint(resume) and cfg.strategy.get("universal_checkpoint"))
    if universal:  # another world size can resume a DeepSpeed run through DeepSpeed's universal format
        resume = universal_checkpoint(resume, convert=launcher_rank() == 0)
    preemption = Preemption(run_dir / "checkpoints", on_event=partial(log_event, run_dir))  # picklable: ddp_spawn
    trainer = build_trainer(cfg, run_dir, config, preemption, load_universal=universal)
    if cfg.init_from and resume is None:
        trainer.callbacks.append(ContinueFromStep(resume_step))
    global_batch = cfg.data.batch_size * trainer.world_size * cfg.trainer.accumulate_grad_batches
    module.lr_scale = lr_scale(cfg.optim.lr_scaling, global_batch, cfg.optim.reference_batch)
    lr = float(cfg.optim.optimizer.lr) * module.lr_scale
    if trainer.is_global_zero:
        if resume:
            print(f"voxfm: resuming from {resume} at step {resume_step}", flush=True)
        elif cfg.init_from:
            print(f"voxfm: starting from {cfg.init_from} at step {resume_step} (its weights, a fresh optimiser)",
                  flush=True)
        pinned = trains_on_gpu(cfg.trainer) and cfg.data.loader == "thread"
        batches = (buffer_count(cfg.data.num_workers, QUEUED_PER_WORKER) if pinned
                   else QUEUED_PER_WORKER * max(cfg.data.num_workers, 1) + cfg.data.num_workers)
        print("voxfm: " + memory_line(cfg.data.pool_gib, cfg.data.pool_volumes, cfg.data.regions_per_volume,
                                      cfg.data.num_workers, cfg.data.batch_size, stream.region_size, batches, pinned,
                                      cfg.data.max_sample_mb), flush=True)
        print(f"voxfm: {trainer.world_size} rank(s), global batch {global_batch} regions, peak lr {lr:.3g} "
              f"(optim.lr_scaling={cfg.optim.lr_scaling})", flush=True)
        log_event(run_dir, event="resume" if resume else "start", step=resume_step,
                  checkpoint=str(resume) if resume else cfg.init_from, world_size=trainer.world_size,
                  global_batch=global_batch, lr=lr, **({"changes": changes} if changes else {}))
    try:
        trainer.fit(module, train_dataloaders=build_loader(stream, cfg.data, trains_on_gpu(cfg.trainer)),
                    ckpt_path=str(resume) if resume else None, weights_only=True)
    finally:  # also when fit raised (ShutDownProcessGroup covers a finished fit in every rank)
        shut_down_process_group()
    if preemption.result is not None:
        raise preemption.result
    if trainer.is_global_zero:
        # read back from disk: under ddp_spawn this process's trainer never sees the workers' steps
        final, step = find_resume_checkpoint(run_dir / "checkpoints")
        log_event(run_dir, event="end", step=step)
        print(f"voxfm: finished at step {step}; latest checkpoint {final}", flush=True)
    return run_dir / "checkpoints" / "last.ckpt"
