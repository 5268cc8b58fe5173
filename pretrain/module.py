"""The LightningModule: orchestrates masks, objective, optimiser and schedule — no model maths here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch import nn

from pretrain.masking import RandomPatchMasking
from pretrain.schedule import warmup_cosine


def mask_generator(device: torch.device, seed: int, step: int, rank: int) -> torch.Generator:
    """A generator that is a pure function of (seed, step, rank): masks replay exactly after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return g


class PretrainModule(L.LightningModule):
    def __init__(self, backbone: nn.Module, objective: nn.Module, masking: RandomPatchMasking,
                 optimizer: Callable[..., torch.optim.Optimizer], warmup_steps: int, total_steps: int,
                 min_lr_factor: float = 0.01, seed: int = 0):
        super().__init__()
        self.backbone, self.objective, self.masking, self.optimizer_factory = backbone, objective, masking, optimizer
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.min_lr_factor, self.seed = min_lr_factor, seed

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Masks are drawn here, on the training device, so the objective is a pure function of its batch."""
        if self.trainer.training:
            image = batch["image"]
            n = self.backbone.grid[0] * self.backbone.grid[1] * self.backbone.grid[2]
            g = mask_generator(image.device, self.seed, self.global_step, self.global_rank)
            batch["mask"] = self.masking(image.shape[0], n, g)
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs = self.objective(batch, self.backbone)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.global_step}")
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self):
        """AdamW without weight decay on norms, biases and embeddings (ndim < 2), as in MAE/DINOv2."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory(groups)
        schedule = partial(warmup_cosine, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                           min_factor=self.min_lr_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
