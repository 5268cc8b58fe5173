"""`voxfm pretrain`: build data, backbone and objective from the config, train, resume automatically."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from data.loader import ThreadLoader
from data.shards import describe_shard_set
from data.stream import RegionStream, region_loader
from pretrain.callbacks import AtomicCheckpointIO, ConfigInCheckpoint, Throughput
from pretrain.checkpoints import find_resume_checkpoint
from pretrain.images import ReconstructionImages
from pretrain.module import PretrainModule
from pretrain.schema import validate_pretrain


def log_event(run_dir: Path, **event) -> None:
    """One JSON line per start / resume / end in <run_dir>/events.jsonl: the run's history at a glance."""
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}) + "\n")


def build_module(cfg: DictConfig) -> PretrainModule:
    """Backbone from `model`, objective (completed with the backbone's spec) and device stage from `objective`."""
    backbone = instantiate(cfg.model)
    objective = instantiate(cfg.objective.loss)(backbone.spec)
    if not getattr(objective, "trains_decoder", True) and hasattr(backbone, "freeze_decoder"):
        backbone.freeze_decoder()  # unused by the loss: frozen, so DDP needs no unused-parameter search
    stage = instantiate(cfg.objective.stage)
    if cfg.data.region_size is not None:
        stage.check_region(cfg.data.region_size)
    return PretrainModule(
        backbone=backbone, objective=objective, stage=stage,
        optimizer=instantiate(cfg.optim.optimizer), warmup_steps=cfg.optim.warmup_steps,
        total_steps=cfg.trainer.max_steps, min_lr_factor=cfg.optim.min_lr_factor, seed=cfg.seed, fused=cfg.optim.fused,
    )


def build_trainer(cfg: DictConfig, run_dir: Path, config: dict) -> L.Trainer:
    t = cfg.trainer
    precision = t.precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    # flushed at every logging step, so a killed run loses no metrics it had logged
    loggers = [CSVLogger(save_dir=str(run_dir), name="metrics", flush_logs_every_n_steps=t.log_every_n_steps)]
    wandb = None
    if cfg.logger.wandb is not None:
        wandb = WandbLogger(save_dir=str(run_dir), config=config, **cfg.logger.wandb)
        loggers.append(wandb)
    checkpoints = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"), filename="step{step:06d}", auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps, save_top_k=-1, save_last=True,
    )
    return L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=precision, gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches, log_every_n_steps=t.log_every_n_steps,
        logger=loggers, callbacks=[checkpoints, LearningRateMonitor("step"), Throughput(),
                                   ConfigInCheckpoint(config, describe_shard_set(cfg.data.shards)),
                                   ReconstructionImages(run_dir / "images", t.images_every_n_steps, wandb)],
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress_bar, enable_model_summary=True,
        default_root_dir=str(run_dir), use_distributed_sampler=False,
    )


def build_loader(stream: RegionStream, data: DictConfig):
    if data.loader == "thread":
        return ThreadLoader(stream, data.batch_size, data.num_workers)
    if data.loader == "process":
        return region_loader(stream, data.batch_size, data.num_workers)
    raise ValueError(f"data.loader={data.loader!r}; allowed: 'thread', 'process'")


def run_pretrain(cfg: DictConfig) -> Path:
    """Train until `trainer.max_steps`; returns the final checkpoint. Same run_dir again = resume."""
    validate_pretrain(OmegaConf.to_container(cfg, resolve=True))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    resume, resume_step = find_resume_checkpoint(run_dir / "checkpoints")
    L.seed_everything(cfg.seed + resume_step, workers=True, verbose=False)
    module = build_module(cfg)
    # A resumed run draws fresh regions (seeded by the resume step) rather than replaying the first ones.
    region_size = cfg.data.region_size or module.stage.region_size_needed()
    stream = RegionStream(cfg.data.shards, region_size, cfg.data.regions_per_volume, cfg.data.foreground_prob,
                          cfg.data.shuffle_buffer, seed=cfg.seed + resume_step)
    trainer = build_trainer(cfg, run_dir, config)
    if trainer.is_global_zero:
        if resume:
            print(f"voxfm: resuming from {resume} at step {resume_step}", flush=True)
        log_event(run_dir, event="resume" if resume else "start", step=resume_step,
                  checkpoint=str(resume) if resume else None)
    trainer.fit(module, train_dataloaders=build_loader(stream, cfg.data),
                ckpt_path=str(resume) if resume else None)
    if trainer.is_global_zero:
        # read back from disk: under ddp_spawn this process's trainer never sees the workers' steps
        final, step = find_resume_checkpoint(run_dir / "checkpoints")
        log_event(run_dir, event="end", step=step)
        print(f"voxfm: finished at step {step}; latest checkpoint {final}", flush=True)
    return run_dir / "checkpoints" / "last.ckpt"
