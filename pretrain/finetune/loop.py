"""The fine-tuning loop `voxfm finetune` and the pretraining probe share: a segmenter trained for N steps on a
stream of random crops with Dice + cross-entropy (AdamW over its trainable parameters), then scored with Dice
per class on whole validation volumes predicted by MONAI's sliding-window inference.

`SegmentationModule` is the one definition of a step. `voxfm finetune` hands it to a Lightning Trainer
(checkpoints, resume, metrics, precision); the probe steps it with `train_steps`, in the order Lightning's
automatic optimisation does (loss, zero_grad, backward, step), because it runs inside a pretraining fit, where a
second Trainer would take over the run's devices, process group and loggers.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch.utils.data import DataLoader

from voxfm.pretrain.finetune.labelled import CropStream, Labelled
from voxfm.pretrain.finetune.model import encoder_parameters


def crop_batches(
    volumes: list[Labelled], crop_size, batch_size: int, seed: int, foreground_prob: float = 0.67
) -> DataLoader:
    """Endless batches of (image, label) crops, each [B, 1, X, Y, Z], drawn in the loading process."""
    return DataLoader(CropStream(volumes, crop_size, foreground_prob, seed=seed), batch_size=batch_size, num_workers=0)


class SegmentationModule(L.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float, weight_decay: float, freeze_encoder: bool = False):
        super().__init__()
        self.net, self.lr, self.weight_decay = net, lr, weight_decay
        if freeze_encoder:
            for p in encoder_parameters(net):
                p.requires_grad_(False)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, x):
        return self.net(x)

    def step_loss(self, batch) -> torch.Tensor:
        """batch: (image [B, 1, X, Y, Z] float, label [B, 1, X, Y, Z] class indices)."""
        image, label = batch
        return self.loss(self.net(image), label)

    def training_step(self, batch, batch_idx):
        loss = self.step_loss(batch)
        self.log("train/loss", loss, batch_size=batch[0].shape[0])  # the bar reads train/ metrics itself
        return loss

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return optimizer


def train_steps(module: SegmentationModule, batches, steps: int) -> None:
    """`steps` optimiser steps of `module` on `batches`, on the device its parameters are on, without a Trainer."""
    device = next(module.parameters()).device
    optimizer = module.configure_optimizers()
    module.train()
    batches = iter(batches)
    for _ in range(steps):
        image, label = next(batches)
        loss = module.step_loss((image.to(device), label.to(device)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def evaluate(net: torch.nn.Module, volumes, n_classes: int, crop_size, sw_batch_size: int, overlap: float) -> dict:
    """Whole-volume sliding-window prediction → Dice per foreground class (NaN where a class is absent from
    every validation volume and never predicted), and their mean over the classes present."""
    net.eval()
    device = next(net.parameters()).device
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    for vol in volumes:
        image = torch.from_numpy(vol.image)[None, None].to(device)
        logits = sliding_window_inference(image, tuple(crop_size), sw_batch_size, net, overlap=overlap)
        pred = torch.nn.functional.one_hot(logits.argmax(1), n_classes).permute(0, 4, 1, 2, 3)
        truth = torch.nn.functional.one_hot(torch.from_numpy(vol.label)[None].to(device), n_classes)
        metric(pred.float(), truth.permute(0, 4, 1, 2, 3).float())
    per_volume = metric.aggregate().cpu().numpy()  # [volumes, classes - 1], NaN where a class is absent
    scored = np.isfinite(per_volume).sum(axis=0)
    per_class = np.where(scored > 0, np.nansum(per_volume, axis=0) / np.maximum(scored, 1), np.nan)
    return {
        "mean_dice": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan"),
        "per_class": [None if not np.isfinite(d) else round(float(d), 4) for d in per_class],
    }
