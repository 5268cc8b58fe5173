"""`callbacks.probe`: pick checkpoints by downstream value, not by loss.

Every `every_n_steps` (on rank 0) the current backbone (the EMA teacher's, where the objective keeps one) is copied
into a segmentation network (the full ResEnc UNet with a new head, or UNETR around a patch-16 ViT), fine-tuned for
`steps` on `n_train` labelled volumes, and scored with Dice on held-out ones (`voxfm finetune`'s data split and its
loop, `finetune.loop`). The mean Dice is logged as `probe/mean_dice`. Training state is untouched: the probe works
on a copy, under its own random generator.
"""

from __future__ import annotations

import time

import lightning as L
import torch

from voxfm.data.stream.crops import triple
from voxfm.pretrain.export.formats import backbone_weights
from voxfm.pretrain.finetune.labelled import label_values, read_labelled, split, to_labelled
from voxfm.pretrain.finetune.loop import SegmentationModule, crop_batches, evaluate, train_steps
from voxfm.pretrain.finetune.model import segmenter_with_weights


def probed_backbone(pl_module) -> torch.nn.Module:
    """The backbone `voxfm export` would export: the EMA teacher's for objectives that keep one (self-distillation),
    else the trained one."""
    objective = pl_module.objective
    return objective.teacher_backbone if objective.declaration.teacher else pl_module.backbone


class Probe(L.Callback):
    def __init__(
        self,
        shards: str,
        every_n_steps: int = 1000,
        steps: int = 50,
        n_train: int | None = 2,
        crop_size=(32, 32, 32),
        batch_size: int = 2,
        lr: float = 1e-3,
        val_fraction: float = 0.5,
        seed: int = 0,
    ):
        if every_n_steps < 1 or steps < 1:
            raise ValueError(f"callbacks.probe: every_n_steps={every_n_steps}, steps={steps}: expected >= 1")
        samples = read_labelled(shards)
        self.values = label_values(samples)
        train, val, self.split = split(samples, val_fraction, seed, n_train)
        self.train, self.val = to_labelled(train, self.values), to_labelled(val, self.values)
        self.every, self.steps, self.crop = every_n_steps, steps, triple(crop_size)
        self.batch_size, self.lr, self.seed = batch_size, lr, seed

    def _segmenter(self, backbone: torch.nn.Module) -> torch.nn.Module:
        weights, meta = backbone_weights(backbone)
        return segmenter_with_weights(meta, weights, len(self.values), self.crop, {"feature_size": 16}, "probe")

    def run(self, backbone: torch.nn.Module) -> dict:
        start = time.perf_counter()
        device = next(backbone.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            net = self._segmenter(backbone).to(device)
            module = SegmentationModule(net, self.lr, weight_decay=1e-2)  # AdamW's default, as the probe always had
            train_steps(module, crop_batches(self.train, self.crop, self.batch_size, self.seed), self.steps)
            scores = evaluate(net, self.val, len(self.values), self.crop, 4, 0.25)
        return {**scores, "seconds": time.perf_counter() - start}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every or not trainer.is_global_zero:
            return
        result = self.run(probed_backbone(pl_module))
        pl_module.log("probe/mean_dice", result["mean_dice"], batch_size=1, rank_zero_only=True)
        print(
            f"voxfm: probe at step {step}: mean Dice {result['mean_dice']:.4f} ({result['seconds']:.1f} s, "
            f"{self.steps} steps on {len(self.train)} volume(s), {self.split})",
            flush=True,
        )
