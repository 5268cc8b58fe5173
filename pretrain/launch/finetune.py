"""`voxfm finetune`: segmentation from a pretrained export (or from scratch), Dice per class on held-out volumes.

Each arm (pretrained, and with `compare_scratch=true` the same network from random initialisation with the
same seed, data and steps) trains with Dice + cross-entropy on random crops, checkpoints under
`run_dir/<arm>/` (a rerun resumes), then predicts every validation volume whole with MONAI's sliding-window
inference and scores it with MONAI's Dice (the step and the scoring: `finetune.loop`, shared with the probe).
`run_dir/results.json` and `results.md` hold the table.

What `voxfm pretrain` guarantees, fine-tuning keeps: one job per run_dir (its lock), a rerun with a changed recipe
refused before anything is written (`FROZEN`: the backbone, network, data, seed and optimiser; more steps, logging,
checkpoint cadence, evaluation settings are free), checkpoints nobody can read (or a record of checkpoints that are
gone) refused rather than started over, SIGTERM/SIGUSR1/Ctrl-C → a checkpoint at that step and exit 75/130, one
metrics.csv per arm across resumes, config.yaml and results written atomically, and a quiet start.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from voxfm.data.ingest.locks import folder_lock
from voxfm.data.ingest.safe_files import read_small_text, refuse_linked_folders, write_text_atomic
from voxfm.data.stream.crops import triple
from voxfm.pretrain.callbacks.checkpointing import FinalCheckpoint
from voxfm.pretrain.callbacks.monitoring import ProgressBar
from voxfm.pretrain.callbacks.preemption import Preemption
from voxfm.pretrain.errors import ConfigError, UnreadableCheckpoints, config_errors
from voxfm.pretrain.export.formats import backbone_weights
from voxfm.pretrain.finetune.labelled import label_values, read_labelled, split, to_labelled
from voxfm.pretrain.finetune.loop import SegmentationModule, crop_batches, evaluate
from voxfm.pretrain.finetune.model import build_segmenter, read_export, segmenter_from_export
from voxfm.pretrain.launch.run import write_config
from voxfm.pretrain.runtime.metrics_csv import RunCSVLogger
from voxfm.pretrain.runtime.quiet import model_line, quiet_start
from voxfm.pretrain.runtime.shareable import path_name
from voxfm.pretrain.training.checkpoint_io import AtomicCheckpointIO
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint, load_checkpoint
from voxfm.pretrain.training.resume_check import config_changes, covered

# what a fine-tuning checkpoint was trained with; a rerun that changes any of it is refused
FROZEN = ("backbone", "model", "data", "seed", "unetr", "freeze_encoder", "lr", "weight_decay", "trainer.precision")
MOVABLE = ("data.shards",)  # the shard set may move: data.digest says whether it still holds the same samples
CONFIG_KEY = "voxfm_finetune_config"  # not pretrain's `voxfm_config`: export refuses a fine-tuning checkpoint


class _ConfigInCheckpoint(L.Callback):
    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[CONFIG_KEY] = self.config


def check_finetune_resume(stored: dict | None, config: dict, checkpoint: Path) -> None:
    """Refuses, one line per key and before anything is written, a rerun whose recipe differs from the one the
    checkpoint was trained with (`FROZEN`); other keys may change."""
    if not isinstance(stored, dict):  # without it, nothing says the checkpoint fits this recipe
        raise ConfigError(
            f"cannot resume from {checkpoint}: it holds no {CONFIG_KEY} (not written by voxfm finetune), so it "
            "cannot be checked against this recipe; nothing was written: use another run_dir"
        )
    refused = [
        f"{key}: {before!r} → {after!r}"
        for key, (before, after) in config_changes(stored, config).items()
        if covered(key, FROZEN) and key not in MOVABLE
    ]
    if refused:
        raise ConfigError(
            f"cannot resume from {checkpoint}: the fine-tuning recipe differs from the one it was trained with; "
            "nothing was written (use another run_dir):\n  " + "\n  ".join(refused)
        )


def _trainer(cfg: DictConfig, arm_dir: Path, config: dict, resume_step: int, preemption: Preemption) -> L.Trainer:
    t = cfg.trainer
    bar = [ProgressBar(t.log_every_n_steps)] if t.progress_bar else []
    return L.Trainer(
        max_steps=cfg.steps,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision or "32-true",
        logger=RunCSVLogger(str(arm_dir), resume_step, flush_logs_every_n_steps=t.log_every_n_steps),
        log_every_n_steps=t.log_every_n_steps,
        callbacks=[
            ModelCheckpoint(
                dirpath=str(arm_dir / "checkpoints"),
                enable_version_counter=False,  # one job per run_dir (its lock): never a `last-v1.ckpt`
                filename="step{step:06d}",
                auto_insert_metric_name=False,
                every_n_train_steps=t.checkpoint_every_n_steps,
                save_top_k=-1,
                save_last=True,
            ),
            FinalCheckpoint(arm_dir / "checkpoints"),
            _ConfigInCheckpoint(config),
            preemption,
            *bar,
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(arm_dir),
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def _network(cfg: DictConfig, arm: str, n_classes: int, crop_size) -> tuple[torch.nn.Module, str]:
    """pretrained arm: from the export; scratch arm: the same architecture, random weights."""
    unetr = OmegaConf.to_container(cfg.unetr)
    if cfg.backbone != "none" and arm == "pretrained":
        net, meta = segmenter_from_export(cfg.backbone, n_classes, crop_size, unetr)
        return net, meta["architecture"]
    if cfg.backbone != "none":
        meta, _ = read_export(cfg.backbone)
        return build_segmenter(meta["architecture"], meta["kwargs"], n_classes, crop_size, unetr), meta["architecture"]
    from hydra.utils import instantiate

    _, meta = backbone_weights(instantiate(cfg.model))  # the architecture and kwargs an export would carry
    return build_segmenter(meta["architecture"], meta["kwargs"], n_classes, crop_size, unetr), meta["architecture"]


def resume_points(cfg: DictConfig, arms: list[str], run_dir: Path, config: dict) -> dict[str, tuple]:
    """Each arm's (checkpoint, step) to resume from, every one checked before any arm trains: checkpoints that
    cannot be read, a results.json that records steps whose checkpoints are gone, or a changed recipe are refused."""
    recorded = _recorded_arms(run_dir)
    points = {}
    for arm in arms:
        refuse_linked_folders(run_dir, (arm, f"{arm}/checkpoints", f"{arm}/metrics"))
        checkpoints = run_dir / arm / "checkpoints"
        resume, step = find_resume_checkpoint(checkpoints)  # UnreadableCheckpoints (exit 4) when none reads
        steps_done = recorded.get(arm, {}).get("steps", 0) if recorded is not None else None
        if resume is None and recorded is None:
            raise UnreadableCheckpoints(
                f"run_dir={run_dir}: results.json cannot be read as voxfm finetune writes it, so whether arm {arm} "
                "trained cannot be told, and it holds no checkpoint. Nothing was written: use another run_dir, or "
                "delete results.json to start this one over"
            )
        if resume is None and not (isinstance(steps_done, (int, float)) and steps_done <= 0):
            raise UnreadableCheckpoints(
                f"run_dir={run_dir}: results.json records arm {arm} trained to step {steps_done} but {checkpoints} "
                "holds no checkpoint. Nothing was written: put them back, use another run_dir, or delete "
                "results.json to start this one over"
            )
        if resume is not None:
            check_finetune_resume(load_checkpoint(resume, mmap=True).get(CONFIG_KEY), config, resume)
        points[arm] = (resume, step)
    return points


def _recorded_arms(run_dir: Path) -> dict | None:
    """results.json's record per arm ({} when there is none), or None when the file is there but unreadable or not
    what voxfm finetune writes (then it cannot say whether an arm has trained)."""
    path = run_dir / "results.json"
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        arms = json.loads(read_small_text(path)).get("arms")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(arms, dict) or not all(isinstance(a, dict) for a in arms.values()):
        return None
    return arms


def run_arm(cfg: DictConfig, arm: str, train, val, n_classes: int, run_dir: Path, point: tuple, config: dict) -> dict:
    crop = triple(cfg.data.crop_size)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net, architecture = _network(cfg, arm, n_classes, crop)
    module = SegmentationModule(net, cfg.lr, cfg.weight_decay, cfg.freeze_encoder)
    arm_dir = run_dir / arm
    resume, resume_step = point
    print(f"voxfm: {arm} arm, {model_line(module)}", flush=True)
    if resume is not None:
        print(f"voxfm: {arm} arm resuming from {resume} at step {resume_step}", flush=True)
    loader = crop_batches(train, crop, cfg.data.batch_size, cfg.seed + resume_step, cfg.data.foreground_prob)
    start = time.perf_counter()
    preemption = Preemption(arm_dir / "checkpoints")
    trainer = _trainer(cfg, arm_dir, config, resume_step, preemption)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume) if resume else None, weights_only=True)
    if preemption.result is not None:
        raise preemption.result
    scores = evaluate(module.net, val, n_classes, crop, cfg.sw_batch_size, cfg.sw_overlap)
    return {
        "architecture": architecture,
        "steps": int(trainer.global_step),
        "resumed_from": resume_step,
        "wall_s": round(time.perf_counter() - start, 1),
        **scores,
    }


def results_table(results: dict) -> str:
    arms = results["arms"]
    values = results["label_values"][1:]
    lines = [
        f"# voxfm finetune — {results['shards']}",
        "",
        f"seed {results['seed']}, {results['steps']} steps, split {results['split']}, "
        f"{results['n_train']} train / {results['n_val']} validation volume(s)",
        "",
        "| arm | mean Dice | steps | wall s | " + " | ".join(f"class {v}" for v in values[:12]) + " |",
        "|---|---|---|---|" + "---|" * len(values[:12]),
    ]
    for name, arm in arms.items():
        per = ["—" if d is None else f"{d:.3f}" for d in arm["per_class"][:12]]
        row = f"| {name} | {arm['mean_dice']:.4f} | {arm['steps']} | {arm['wall_s']} | "
        lines.append(row + " | ".join(per) + " |")
    if len(values) > 12:
        lines.append(f"\n({len(values)} classes; all of them in results.json)")
    return "\n".join(lines) + "\n"


def run_finetune(cfg: DictConfig) -> dict:
    """Train every arm to `steps` and score it; the same run_dir again resumes. One job per run_dir: a second one
    raises `FolderLocked` (exit 2) naming the holder."""
    if cfg.backbone == "none" and cfg.compare_scratch:
        raise ConfigError("compare_scratch=true compares a pretrained backbone with scratch: set backbone=<export>")
    quiet_start()
    with folder_lock(cfg.run_dir, "run_dir"):
        return _finetune(cfg, Path(cfg.run_dir))


def _finetune(cfg: DictConfig, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    with config_errors():  # shards without label maps, or label maps that are no segmentation: one line, exit 2
        samples = read_labelled(cfg.data.shards)
        values = label_values(samples)
    train_raw, val_raw, how = split(samples, cfg.data.val_fraction, cfg.seed, cfg.data.n_train)
    train, val = to_labelled(train_raw, values), to_labelled(val_raw, values)
    arms = ["pretrained", "scratch"] if cfg.compare_scratch else ["scratch" if cfg.backbone == "none" else "pretrained"]
    config = OmegaConf.to_container(cfg, resolve=True)
    # what the shard set holds, not where: the same path with other data is another recipe (sample keys carry
    # each volume's content hash)
    keys = "\n".join(sorted(meta["key"] for meta, _, _ in samples))
    config["data"]["digest"] = hashlib.sha256(keys.encode()).hexdigest()[:16]
    points = resume_points(cfg, arms, run_dir, config)  # nothing is written before every arm's resume is checked
    write_config(run_dir, cfg)
    results = {
        "shards": path_name(str(cfg.data.shards)),  # names, not absolute paths: results are made to be shared
        "backbone": path_name(str(cfg.backbone)),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "split": how,
        "n_train": len(train),
        "n_val": len(val),
        "label_values": values,
        "freeze_encoder": cfg.freeze_encoder,
        "arms": {},
    }
    for arm in arms:
        results["arms"][arm] = run_arm(cfg, arm, train, val, len(values), run_dir, points[arm], config)
        write_text_atomic(run_dir / "results.json", json.dumps(results, indent=1))
    write_text_atomic(run_dir / "results.md", results_table(results))
    return results
