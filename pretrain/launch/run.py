"""`voxfm pretrain`: build data, backbone and objective from the config, train, resume automatically.

The composition root of a run: it locks run_dir, checks a resume against the stored config, derives once the facts
several parts need (the resume step, whether it trains on a GPU) and hands them down as plain values to the
builders (`launch.build`) and the fit. Nothing under training/, callbacks/ or objectives/ imports it.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from voxfm.data.ingest.locks import folder_lock
from voxfm.data.ingest.safe_files import refuse_a_link, refuse_linked_folders, write_text_atomic
from voxfm.data.stream.device_feed import buffer_count
from voxfm.data.stream.loader import QUEUED_PER_WORKER
from voxfm.data.stream.pool import device_pool_line, memory_line
from voxfm.data.stream.volume_feed import staging_count
from voxfm.pretrain.callbacks.feed_state import KEY as FEED_KEY
from voxfm.pretrain.callbacks.preemption import Preemption
from voxfm.pretrain.callbacks.teardown import shut_down_process_group
from voxfm.pretrain.config.renamed import renamed_key, upgraded
from voxfm.pretrain.config.schema import validate_pretrain
from voxfm.pretrain.errors import ConfigError, UnreadableCheckpoints
from voxfm.pretrain.launch.build import (
    build_loader,
    build_module,
    build_stream,
    build_trainer,
    log_event,
    replayable,
    trains_on_gpu,
)
from voxfm.pretrain.launch.device_budget import device_pool_budget
from voxfm.pretrain.launch.placement import fit_workers_to_cpu, warn_large_model_on_cpu
from voxfm.pretrain.runtime.loggers import finish_wandb
from voxfm.pretrain.runtime.quiet import model_line, quiet_start
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint, is_deepspeed_checkpoint, load_checkpoint
from voxfm.pretrain.training.init_from import ContinueFromStep, init_module
from voxfm.pretrain.training.resume_check import check_resume_config
from voxfm.pretrain.training.schedule import lr_scale
from voxfm.pretrain.training.strategy import universal_checkpoint


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
    write_text_atomic(path, text)


def refuse_a_lost_record(run_dir: Path) -> None:
    """A run_dir whose events.jsonl says checkpoints were written (an end, a resume, a preemption) but which holds
    none is refused: training from step 0 there would silently start over a run someone expects to continue."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") in ("end", "resume", "preempted"):
            kept.append(event.get("step") if isinstance(event.get("step"), int) else 0)
    if kept:
        raise UnreadableCheckpoints(
            f"run_dir={run_dir}: events.jsonl records checkpoints up to step {max(kept)} "
            f"but {run_dir / 'checkpoints'} holds none. Nothing was written: put them back, use another run_dir, or "
            "delete events.jsonl to start this one over from step 0"
        )


def run_pretrain(cfg: DictConfig, validated: bool = False) -> Path:
    """Train until `trainer.max_steps`; returns the final checkpoint. Same run_dir again = resume. One job per
    run_dir: a second one raises `FolderLocked` (exit 2) naming the holder. `validated=True`: the caller (the CLI)
    has already run `validate_pretrain` on this cfg."""
    if not validated:
        validate_pretrain(OmegaConf.to_container(cfg, resolve=True))
    quiet_start()
    # torchrun / SLURM / Lightning's DDP launcher start every rank here; one holds the lock for the whole job
    with folder_lock(cfg.run_dir, "run_dir") if is_job_owner() else nullcontext():
        return _train(cfg, Path(cfg.run_dir))


def _train(cfg: DictConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume, resume_step = find_resume_checkpoint(run_dir / "checkpoints")
    if resume is None:
        refuse_a_lost_record(run_dir)
    changes, feed_record = {}, None
    if resume is not None:  # every rank checks (each must stop); nothing is written before this passes
        checkpoint = load_checkpoint(resume, mmap=True)
        stored, feed_record = checkpoint.get("voxfm_config"), checkpoint.get(FEED_KEY)
        if not isinstance(stored, dict):  # without it, nothing says the checkpoint fits this config
            raise ConfigError(
                f"cannot resume from {resume}: it holds no voxfm_config (not written by voxfm pretrain), so it "
                "cannot be checked against this config; nothing was written: use another run_dir"
            )
        allowed = [renamed_key(k) for k in cfg.resume.allow_changes]
        changes = check_resume_config(upgraded(stored), config, allowed, resume)
    on_gpu = trains_on_gpu(cfg.trainer)
    pool_bytes = device_pool_budget(cfg.data, on_gpu)  # a pool the device cannot hold: refused before writing
    if is_job_owner():
        refuse_linked_folders(run_dir, ("checkpoints", "metrics", "images", "tensorboard", "wandb"))
        for name in ("events.jsonl", "metrics/metrics.csv", "wandb_id"):  # appended to in place: never a link
            refuse_a_link(run_dir / name)
        write_config(run_dir, cfg)
    L.seed_everything(cfg.seed + resume_step, workers=True, verbose=False)
    fit_workers_to_cpu(cfg, on_gpu)
    module = build_module(cfg)
    if launcher_rank() == 0:
        warn_large_model_on_cpu(module, on_gpu)
        print(f"voxfm: {model_line(module)}", flush=True)
    if cfg.init_from and resume is None:  # a new run seeded by a format=full export: its weights and step
        resume_step = init_module(module, cfg.init_from, cfg.trainer.max_steps)
        L.seed_everything(cfg.seed + resume_step, workers=True, verbose=False)
    universal = bool(resume and is_deepspeed_checkpoint(resume) and cfg.strategy.get("universal_checkpoint"))
    if universal:  # another world size can resume a DeepSpeed run through DeepSpeed's universal format
        resume = universal_checkpoint(resume, convert=launcher_rank() == 0)
    preemption = Preemption(run_dir / "checkpoints", on_event=partial(log_event, run_dir))  # picklable: ddp_spawn
    trainer = build_trainer(cfg, run_dir, config, on_gpu, preemption, load_universal=universal, resume_step=resume_step)
    if cfg.init_from and resume is None:
        trainer.callbacks.append(ContinueFromStep(resume_step))
    # A resumed run with the device pool goes on with the batches the uninterrupted run would have drawn (the pool's
    # state in the checkpoint); otherwise it draws fresh regions, seeded by the resume step.
    region_size = cfg.data.region_size or module.view_pipeline.region_size_needed()
    replay, why = replayable(feed_record, cfg.data, trainer.world_size) if pool_bytes else (None, "")
    if resume and pool_bytes and replay is None and trainer.is_global_zero:
        print(f"voxfm: the device pool draws fresh batches, seeded by the resume step: {why}", flush=True)
    seed = replay[0]["seed"] if replay else cfg.seed + resume_step
    stream = build_stream(cfg.data, region_size, seed=seed, device_pool=bool(pool_bytes))
    global_batch = cfg.data.batch_size * trainer.world_size * cfg.trainer.accumulate_grad_batches
    module.lr_scale = lr_scale(cfg.optim.lr_scaling, global_batch, cfg.optim.reference_batch)
    lr = float(cfg.optim.optimizer.lr) * module.lr_scale
    if trainer.is_global_zero:
        if resume:
            print(f"voxfm: resuming from {resume} at step {resume_step}", flush=True)
        elif cfg.init_from:
            resized = getattr(module, "init_resized", None) or {}
            print(
                f"voxfm: starting from {cfg.init_from} at step {resume_step} (its weights, a fresh optimiser"
                + (f"; position tables resized for the new crop: {', '.join(resized)}" if resized else "")
                + ")",
                flush=True,
            )
        pinned = on_gpu and cfg.data.loader == "thread"
        batches = (
            buffer_count(cfg.data.num_workers, QUEUED_PER_WORKER)
            if pinned
            else QUEUED_PER_WORKER * max(cfg.data.num_workers, 1) + cfg.data.num_workers
        )
        d = cfg.data
        if pool_bytes:
            staging = staging_count(d.num_workers)
            line = device_pool_line(
                pool_bytes, stream.device_pool_volumes, d.regions_per_volume, d.num_workers, on_gpu, staging
            )
        else:
            line = memory_line(
                d.pool_gib,
                d.pool_volumes,
                d.regions_per_volume,
                d.num_workers,
                d.batch_size,
                stream.region_size,
                batches,
                pinned,
                d.max_sample_mb,
            )
        print(f"voxfm: {line}", flush=True)
        print(
            f"voxfm: {trainer.world_size} rank(s), global batch {global_batch} regions, peak lr {lr:.3g} "
            f"(optim.lr_scaling={cfg.optim.lr_scaling})",
            flush=True,
        )
        log_event(
            run_dir,
            event="resume" if resume else "start",
            step=resume_step,
            checkpoint=str(resume) if resume else cfg.init_from,
            world_size=trainer.world_size,
            global_batch=global_batch,
            lr=lr,
            **({"changes": changes} if changes else {}),
            **({"resized": module.init_resized} if getattr(module, "init_resized", None) else {}),
        )
    try:
        trainer.fit(
            module,
            train_dataloaders=build_loader(stream, cfg.data, on_gpu, replay, pool_bytes),
            ckpt_path=str(resume) if resume else None,
            weights_only=True,
        )
    finally:  # also when fit raised (ShutDownProcessGroup covers a finished fit in every rank)
        finish_wandb(trainer)
        shut_down_process_group()
    if preemption.result is not None:
        raise preemption.result
    if trainer.is_global_zero:
        # read back from disk: under ddp_spawn this process's trainer never sees the workers' steps
        final, step = find_resume_checkpoint(run_dir / "checkpoints")
        log_event(run_dir, event="end", step=step)
        print(f"voxfm: finished at step {step}; latest checkpoint {final}", flush=True)
        pictures = f", pictures {run_dir / 'images'}/" if (run_dir / "images").is_dir() else ""
        print(
            f"voxfm: metrics {run_dir / 'metrics' / 'metrics.csv'} (curves {run_dir / 'metrics.png'}){pictures}; "
            f"next: voxfm export checkpoint={run_dir} output=<folder>",
            flush=True,
        )
    return run_dir / "checkpoints" / "last.ckpt"
