"""`voxfm finetune`: segmentation from a pretrained export (or from scratch), Dice per class on held-out volumes.

Each arm (pretrained, and with `compare_scratch=true` the same network from random initialisation with the
same seed, data and steps) trains with Dice + cross-entropy on random crops, checkpoints under
`run_dir/<arm>/` (a rerun resumes), then predicts every validation volume whole with MONAI's sliding-window
inference and scores it with MONAI's Dice (the step and the scoring: `finetune.loop`, shared with the probe).
`run_dir/results.json` and `results.md` hold the table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from voxfm.data.stream.crops import triple
from voxfm.pretrain.errors import ConfigError, config_errors
from voxfm.pretrain.export.formats import backbone_weights
from voxfm.pretrain.finetune.labelled import label_values, read_labelled, split, to_labelled
from voxfm.pretrain.finetune.loop import SegmentationModule, crop_batches, evaluate
from voxfm.pretrain.finetune.model import build_segmenter, read_export, segmenter_from_export
from voxfm.pretrain.training.checkpoint_io import AtomicCheckpointIO
from voxfm.pretrain.training.checkpoints import find_resume_checkpoint


def _trainer(cfg: DictConfig, arm_dir: Path) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        max_steps=cfg.steps,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision or "32-true",
        logger=CSVLogger(save_dir=str(arm_dir), name="metrics"),
        log_every_n_steps=t.log_every_n_steps,
        callbacks=[
            ModelCheckpoint(
                dirpath=str(arm_dir / "checkpoints"),
                filename="step{step:06d}",
                auto_insert_metric_name=False,
                every_n_train_steps=t.checkpoint_every_n_steps,
                save_top_k=-1,
                save_last=True,
            )
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


def run_arm(cfg: DictConfig, arm: str, train, val, n_classes: int, run_dir: Path) -> dict:
    crop = triple(cfg.data.crop_size)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net, architecture = _network(cfg, arm, n_classes, crop)
    module = SegmentationModule(net, cfg.lr, cfg.weight_decay, cfg.freeze_encoder)
    arm_dir = run_dir / arm
    resume, resume_step = find_resume_checkpoint(arm_dir / "checkpoints")
    loader = crop_batches(train, crop, cfg.data.batch_size, cfg.seed + resume_step, cfg.data.foreground_prob)
    start = time.perf_counter()
    trainer = _trainer(cfg, arm_dir)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume) if resume else None, weights_only=True)
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
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.backbone == "none" and cfg.compare_scratch:
        raise ConfigError("compare_scratch=true compares a pretrained backbone with scratch: set backbone=<export>")
    with config_errors():  # shards without label maps: named in one line, exit 2
        samples = read_labelled(cfg.data.shards)
    values = label_values(samples)
    train_raw, val_raw, how = split(samples, cfg.data.val_fraction, cfg.seed, cfg.data.n_train)
    train, val = to_labelled(train_raw, values), to_labelled(val_raw, values)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    arms = ["pretrained", "scratch"] if cfg.compare_scratch else ["scratch" if cfg.backbone == "none" else "pretrained"]
    results = {
        "shards": str(cfg.data.shards),
        "backbone": str(cfg.backbone),
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
        results["arms"][arm] = run_arm(cfg, arm, train, val, len(values), run_dir)
        (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    (run_dir / "results.md").write_text(results_table(results))
    return results
